"""Showing an apply's phase while the CLI waits for its result.

On a terminal: one line, rewritten in place, with a spinner. Anywhere else
(CI logs): one plain line per phase change. Always on stderr, so stdout
holds only the summary or the JSON.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, TextIO

from temporalio.client import WorkflowHandle

POLL_S = 0.5  # how often the status query is asked
SPIN_S = 0.1  # how often the spinner turns on a terminal
QUERY_TIMEOUT = timedelta(seconds=3)
_SPINNER = "|/-\\"


class Progress:
    def __init__(self, workflow_id: str, stream: TextIO, tty: bool) -> None:
        self._id = workflow_id
        self._stream = stream
        self.tty = tty
        self._text = "starting"
        self._shown: str | None = None
        self._turn = 0

    def show(self, status: dict[str, Any] | None) -> None:
        if status is None:
            return
        text = str(status.get("phase") or "?")
        if text == "waiting_for_lock" and status.get("lock"):
            text += f" ({status['lock']})"
        self._text = text
        if not self.tty and text != self._shown:
            print(f"{self._id}: {text}", file=self._stream, flush=True)
            self._shown = text

    def tick(self) -> None:
        if self.tty:
            self._turn += 1
            spin = _SPINNER[self._turn % len(_SPINNER)]
            self._stream.write(f"\r\x1b[K{spin} {self._id}: {self._text}")
            self._stream.flush()

    def close(self) -> None:
        if self.tty:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


async def status_of(handle: WorkflowHandle[Any, Any]) -> dict[str, Any] | None:
    """The `status` query's answer, or None when it cannot be had right now."""
    try:
        value = await handle.query("status", rpc_timeout=QUERY_TIMEOUT)
    except Exception:  # no worker, closed and not replayable, server hiccup: only the display suffers
        return None
    return value if isinstance(value, dict) else None


async def watch(handle: WorkflowHandle[Any, Any], progress: Progress) -> asyncio.Future[Any]:
    """Wait for the workflow's result, showing its phase; return the finished result future."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[Any] = asyncio.ensure_future(handle.result())
    query: asyncio.Future[dict[str, Any] | None] | None = None
    next_query = 0.0
    try:
        while not result.done():
            if query is not None and query.done():
                progress.show(query.result())
                query = None
            if query is None and loop.time() >= next_query:
                query = asyncio.ensure_future(status_of(handle))
                next_query = loop.time() + POLL_S
            progress.tick()
            await asyncio.wait({result}, timeout=SPIN_S if progress.tty else POLL_S / 5)
    finally:
        if query is not None:
            query.cancel()
        if not result.done():  # interrupted: stop waiting, the apply itself goes on
            result.cancel()
        progress.close()
    return result
