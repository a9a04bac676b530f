"""What every activity shares: its dependencies and the error/redaction boundary."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from platformctl.commands import RemoteCommand
from platformctl.config import Settings
from platformctl.models import ComposeUpResult, RemoteRecord
from platformctl.outcomes import ApplyError, PolicyViolation
from platformctl.policy import remote_output
from platformctl.redact import redact
from platformctl.transport import RemoteOutput, Transport, TransportError

# The contract's workflows: the only ones whose activity tasks this worker runs.
CONTRACT_WORKFLOWS = frozenset({"ApplyWorkflow", "ReapplyWorkflow", "RollbackWorkflow"})
HEARTBEAT_EVERY_S = 1.0
# Policy refusals: one line each, the reason plain (the SDK logs benign failures only at DEBUG).
refusals = logging.getLogger("platform.activity")

T = TypeVar("T")
A = TypeVar("A")  # the activity's one argument


@dataclass
class Deps:
    settings: Settings
    transport: Transport
    client: Client  # to confirm which task queue a workflow runs on
    # Workflow runs confirmed as ours; a run never changes task queue or type.
    confirmed_runs: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)

    async def authorize(self) -> None:
        """Act only for a contract workflow running on this worker's task queue.

        The activity task names the workflow that scheduled it (the server fills
        that in, the scheduler cannot); whether that workflow runs on our task
        queue takes one describe per run. A workflow on another queue, or a
        standalone activity, gets a non-retryable refusal before anything runs.
        """
        info = activity.info()
        if not info.workflow_id or info.workflow_type not in CONTRACT_WORKFLOWS:
            raise PolicyViolation(
                f"activity {info.activity_type} refused: scheduled by {info.workflow_type or 'no workflow'}, "
                "not by one of this worker's workflows"
            )
        run = (info.workflow_id, info.workflow_run_id or "")
        if run in self.confirmed_runs:
            self.confirmed_runs.move_to_end(run)
            return
        if info.is_local and info.task_queue == self.settings.task_queue:
            # A local activity runs inside a workflow task this worker took from its own
            # queue: that is the confirmation, with no describe (no server round trip).
            self._confirm(run)
            return
        desc = await self.client.get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id).describe()
        if desc.task_queue != self.settings.task_queue or desc.workflow_type != info.workflow_type:
            raise PolicyViolation(
                f"activity {info.activity_type} refused: workflow {info.workflow_id} runs on task queue "
                f"{desc.task_queue!r}, not this worker's {self.settings.task_queue!r}"
            )
        self._confirm(run)

    def _confirm(self, run: tuple[str, str]) -> None:
        self.confirmed_runs[run] = None
        if len(self.confirmed_runs) > 4096:
            self.confirmed_runs.popitem(last=False)


class StepActivities:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps


S = TypeVar("S", bound=StepActivities)


def step(fn: Callable[[S, A], Awaitable[T]]) -> Callable[[S, A], Awaitable[T]]:
    """Turn every exception into an ApplicationError with a redacted message.

    Known policy outcomes are non-retryable with their contract type; transport
    errors are RemoteFailed, retryable only when the host may yet answer. Anything
    else is a retryable ToolError (the workflow bounds the attempts). `from
    None` keeps the unredacted original out of the stored failure chain.
    Policy outcomes are BENIGN: an expected "no", logged by us as one WARNING
    line instead of the SDK's traceback (type, message and retry unchanged).
    """

    @functools.wraps(fn)
    async def wrapper(self: S, inp: A) -> T:
        try:
            await self.deps.authorize()
            return await fn(self, inp)
        except ApplyError as e:
            message = redact(str(e))
            info = activity.info()
            refusals.warning(
                "activity %s ends the apply as %s: %s (workflow=%s)", info.activity_type, e.status, message,
                info.workflow_id,
            )
            raise ApplicationError(
                message, type=e.error_type, non_retryable=True, category=ApplicationErrorCategory.BENIGN
            ) from None
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
async def heartbeating(every_s: float = HEARTBEAT_EVERY_S) -> AsyncIterator[None]:
    """Heartbeat while a long call runs: a lost worker is noticed, and a cancel
    request (delivered only in a heartbeat's reply) is seen within seconds."""

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


def ran(command: RemoteCommand, out: RemoteOutput) -> ComposeUpResult:
    """A command that changes the host, as its activity returns it."""
    return ComposeUpResult(
        executed=True,
        command=command.render(),
        timed_out=out.timed_out,
        remote=remote_record(out),
    )


def remote_record(out: RemoteOutput) -> RemoteRecord:
    """The facts of a command's run; its output itself stays out of every record."""
    size, sha = remote_output.digest(out.stdout, out.stderr)
    return RemoteRecord(
        returncode=out.returncode,
        duration_s=round(out.duration_s, 3),
        error_class=remote_output.error_class(out.returncode, out.timed_out, out.stdout, out.stderr),
        progress=remote_output.progress(out.stdout, out.stderr),
        output_bytes=size,
        output_sha256=sha,
    )
