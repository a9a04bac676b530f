"""The worker's log setup: plain text lines by default, or one JSON object per line.

`PLATFORM_LOG_FORMAT=json` switches to JSON: time, level, logger, message,
the exception if any, and the SDK's `temporal_*` extras (which activity or
workflow logged the line) as objects of their own.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from temporalio import activity, workflow
from temporalio.runtime import LogForwardingConfig, LoggingConfig, TelemetryFilter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
# asyncssh logs every connection and channel at INFO: one apply would be a dozen lines.
QUIET_LOGGERS = ("asyncssh",)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        line.update({k: v for k, v in vars(record).items() if k.startswith("temporal_")})
        return json.dumps(line, default=str)


def setup_logging(fmt: str | None) -> None:
    """Log at INFO to stderr in `fmt` ("text" when None or empty)."""
    fmt = fmt or "text"
    if fmt not in FORMATS:
        raise SystemExit(f"PLATFORM_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        # The extras carry the activity's and workflow's details: not again in the message.
        activity.logger.activity_info_on_message = False
        workflow.logger.workflow_info_on_message = False
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def core_logging() -> LoggingConfig:
    """The SDK core's own warnings (it is Rust, and writes them to stderr itself by default)
    through this process's handlers, so that a JSON log stays one JSON object per line."""
    return LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
    )
