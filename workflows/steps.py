"""Step plumbing shared by the workflows of an apply and of a rollback: each step is
an activity with its summary in the Web UI, its failure turned into a contract
status (`Stop`), and the run's phase and search attributes kept up to date."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal, TypeVar, Unpack

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from platformctl.client import PLATFORM_STATUS
    from platformctl.outcomes import STATUS_BY_ERROR_TYPE, Status

T = TypeVar("T")
A = TypeVar("A")  # an activity's argument

# What the apply is doing now, as the status query and the approve Update report it.
Phase = Literal[
    "awaiting_approval",
    "validating",
    "waiting_for_lock",
    "applying",
    "health_check",
    "persisting",
    "rolling_back",
    "done",
]
APPLY_WORKFLOW = "ApplyWorkflow"

# What the Web UI shows for each activity (its summary).
STEP_SUMMARIES = {
    "validate_plan": "1 validate plan",
    "check_approval": "2 check approval",
    "guard_compose_path": "3 guard compose path",
    "check_host_allowlist": "4 check host allowlist",
    "verify_checkout": "4 verify the host's checkout",
    "compose_images": "5 snapshot: compose images",
    "describe_lock_holder": "5 lock: who holds it",
    "compose_up": "5 compose up",
    "compose_ps": "6 health smoke: compose ps",
    "persist_state": "7 persist state",
    "release_lease": "7 release the host's lease",
    "compose_rollback": "rollback: back to the snapshot's image",
    "rollback": "rollback: record",
    "notify": "notify a person",
    "plan_rollback": "rollback: what to go back to",
    "record_rollback": "rollback: record",
}
# Local checks: a few quick tries, then the apply ends as tool_error.
LOCAL_STEP = workflow.ActivityConfig(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3),
)
# Remote steps: retried only while the host may yet answer (connection refused
# or timed out, worker lost); a wrong key or a failed command is final.
REMOTE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=4,
)
# Read-only remote steps (ps, git rev-parse).
READ_STEP = workflow.ActivityConfig(start_to_close_timeout=timedelta(seconds=60), retry_policy=REMOTE_RETRY)


class Stop(Exception):
    """Ends the run with a contract status; `restore`: put the service back on its
    snapshot's image (after compose up), False when nothing was seen to fail."""

    def __init__(self, status: Status, message: str, *, restore: bool = True, unreachable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.restore = restore
        self.unreachable = unreachable  # a remote step's retries ran out on a host that did not answer


class Steps:
    """One run's steps, phase and search attributes. `coalesce`: an apply keeps its
    upserts until it next waits on the server; a RollbackWorkflow sends each at
    once, as it always has (its histories replay so)."""

    def __init__(self) -> None:
        self.phase: Phase = "validating"
        self.coalesce = False
        self._pending: dict[str, SearchAttributeUpdate[str]] = {}
        # What the run is, on top of the Web UI's current details: its static summary is
        # fixed at the start, before the PR and who approved may be known.
        self.headline = ""

    async def run(
        self,
        method: Callable[[Any, A], Awaitable[T]],
        arg: A,
        *,
        remote: bool = False,
        local: bool = False,
        **options: Unpack[workflow.ActivityConfig],
    ) -> T:
        """Run one activity; turn its failure into the contract status.

        `local`: a quick step on the worker's own files (a check of the platform
        files, the state record), run as a local activity (within the workflow task,
        no server round trip); still an activity, with its summary, in the history
        and the UI."""
        config = workflow.ActivityConfig(**(options or LOCAL_STEP))
        config["summary"] = STEP_SUMMARIES.get(method.__name__)
        try:
            if local:
                return await workflow.execute_local_activity_method(
                    method,
                    arg,
                    start_to_close_timeout=config.get("start_to_close_timeout"),
                    retry_policy=config.get("retry_policy"),
                    summary=config["summary"],
                )
            self.flush()
            return await workflow.execute_activity_method(method, arg, **config)
        except FailureError as e:
            if not isinstance(e, ActivityError) and not local:
                raise
            # A local activity's own failure can arrive unwrapped.
            cause = e.cause if isinstance(e, ActivityError) else e
            if isinstance(cause, CancelledError):
                raise asyncio.CancelledError() from None  # our own cancel, come back from the activity
            if isinstance(cause, ApplicationError) and cause.type in STATUS_BY_ERROR_TYPE:
                unreachable = remote and cause.type == "RemoteFailed" and not cause.non_retryable
                raise Stop(STATUS_BY_ERROR_TYPE[cause.type], cause.message, unreachable=unreachable) from None
            status: Status = "remote_failed" if remote else "tool_error"
            # A cause is always a FailureError (the SDK's failure converter builds it), typed as any exception.
            detail = cause.message if isinstance(cause, FailureError) else e.message
            raise Stop(status, f"{method.__name__} failed: {detail}") from None

    def enter(self, phase: Phase, details: str) -> None:
        """A new phase, shown in the status query, PlatformStatus and the UI's current details."""
        if phase != self.phase:
            self.upsert(PLATFORM_STATUS.value_set(phase))
        self.phase = phase
        self.details(details)

    def details(self, text: str) -> None:
        """The UI's current details: the headline, then what the run does or how it ended."""
        workflow.set_current_details(f"{self.headline}\n\n{text}" if self.headline else text)

    def upsert(self, update: SearchAttributeUpdate[str]) -> None:
        """Coalesced in an apply: kept until it next waits on the server (a scheduled
        step, the approval, the lock) or ends, then sent as one upsert with the last
        value of each attribute. Local steps run within the workflow task, so nobody
        could have seen what they pass through."""
        if self.coalesce:
            self._pending[update.key.name] = update
        else:
            workflow.upsert_search_attributes([update])

    def flush(self) -> None:
        if self._pending:
            workflow.upsert_search_attributes(list(self._pending.values()))
            self._pending = {}

    def asked_by_rollbacks(self, patch: str) -> None:
        """A RollbackWorkflow of the previous version asked `patch` here; an apply never
        did: a patch marker after a local activity in the same workflow task does not
        replay (TMPRL1100, "patch marker encountered ... no corresponding change command")."""
        if not self.coalesce:
            workflow.deprecate_patch(patch)


async def both(first: Awaitable[A], second: Awaitable[T]) -> tuple[A, T]:
    """Both steps side by side; the first one's failure (a `Stop`) is raised once both
    have ended, so neither is left running behind the next step. A cancel reaches both."""
    a, b = await asyncio.gather(first, second, return_exceptions=True)
    for outcome in (a, b):
        if isinstance(outcome, BaseException):
            raise outcome
    return a, b  # type: ignore[return-value]


async def uncancellable(step: Awaitable[T]) -> T:
    """Finish `step` even when a cancel request arrives meanwhile: records and
    lock releases must not be cut short. The caller's cancel is handled after."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        return await task
