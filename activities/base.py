"""What every activity shares: its dependencies and the error/redaction boundary."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from platformctl.config import Settings
from platformctl.outcomes import ApplyError
from platformctl.redact import redact
from platformctl.transport import Transport, TransportError

T = TypeVar("T")
I = TypeVar("I")


@dataclass
class Deps:
    settings: Settings
    transport: Transport


class StepActivities:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps


def step(fn: Callable[[StepActivities, I], Awaitable[T]]) -> Callable[[StepActivities, I], Awaitable[T]]:
    """Turn every exception into an ApplicationError with a redacted message.

    Known policy outcomes are non-retryable with their contract type; transport
    errors are RemoteFailed, retryable only when the host may yet answer. Anything
    else is a retryable ToolError (the workflow bounds the attempts). `from
    None` keeps the unredacted original out of the stored failure chain.
    """

    @functools.wraps(fn)
    async def wrapper(self: StepActivities, inp: I) -> T:
        try:
            return await fn(self, inp)
        except ApplyError as e:
            raise ApplicationError(redact(str(e)), type=e.error_type, non_retryable=True) from None
        except TransportError as e:
            # Refused or timed-out connections may pass; a wrong key never will.
            raise ApplicationError(
                redact(str(e)), type="RemoteFailed", non_retryable=not e.retryable
            ) from None
        except asyncio.CancelledError:
            raise
        except Exception as e:
            message = redact(f"{type(e).__name__}: {e}")
            activity.logger.warning("activity %s failed: %s", activity.info().activity_type, message)
            raise ApplicationError(message, type="ToolError") from None

    return wrapper


@contextlib.asynccontextmanager
async def heartbeating(every_s: float = 5.0) -> AsyncIterator[None]:
    """Heartbeat while a long call runs, so a lost worker is noticed quickly."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every_s)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
