"""Prometheus metrics: the SDK's own (workers, pollers, activities) plus apply outcomes.

`PLATFORM_METRICS_ADDRESS` (host:port) turns them on; `/metrics` there is
served by the SDK runtime that the worker's client is connected with (which
also sends the SDK core's log lines to Python logging: platformctl/logs.py).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from temporalio import activity
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from platformctl.config import MODULE_ID
from platformctl.logs import core_logging

OUTCOMES = "platform_apply_outcomes_total"
DURATION = "platform_apply_duration_seconds"
# Seconds from the workflow's start, approval wait included: seconds to days.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0, 86400.0, 7 * 86400.0)


def runtime_from_env(env: Mapping[str, str]) -> Runtime:
    """The worker's SDK runtime: the core's log lines through Python logging, and Prometheus
    metrics at PLATFORM_METRICS_ADDRESS when it is set."""
    address = env.get("PLATFORM_METRICS_ADDRESS")
    metrics = _prometheus(address) if address else None
    try:
        return Runtime(telemetry=TelemetryConfig(logging=core_logging(), metrics=metrics))
    except Exception as e:
        raise SystemExit(f"cannot serve metrics at PLATFORM_METRICS_ADDRESS={address}: {e}") from None


def _prometheus(address: str) -> PrometheusConfig:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SystemExit(f"PLATFORM_METRICS_ADDRESS must be host:port (e.g. 127.0.0.1:9464), not {address!r}")
    try:
        # The SDK binds only an IP address: a name such as localhost is looked up here.
        ip = str(socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)[0][4][0])
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot serve metrics at PLATFORM_METRICS_ADDRESS={address}: {e}") from None
    bind = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return PrometheusConfig(bind_address=bind, histogram_bucket_overrides={DURATION: DURATION_BUCKETS})


def record_outcome(status: str, module: str | None, duration_s: float | None) -> None:
    """Count one apply outcome (inside an activity: a no-op meter when metrics are off)."""
    meter = activity.metric_meter()
    # A label from a blocked input could be anything: only valid module ids become series.
    label = module if module is not None and MODULE_ID.fullmatch(module) else "-"
    meter.create_counter(OUTCOMES, "Apply outcomes by status and module").add(1, {"status": status, "module": label})
    if duration_s is not None:
        meter.create_histogram_float(DURATION, "Seconds from an apply's start to its outcome", "s").record(
            duration_s, {"status": status}
        )
