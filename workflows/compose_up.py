"""Step 5, compose up: the host agent's `apply`, once per run on the host. When a
cancel reaches the step it is what ends the apply; when the host stops answering,
the agent is asked again on durable timers for the outcome it recorded. The
lease it takes on the project is released when the apply ends."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.remote_steps import RemoteSteps
    from platformctl.models import ComposePsInput, ComposeUpInput, ComposeUpResult, Target
    from workflows.steps import READ_STEP, REMOTE_RETRY, Steps, Stop

# Patches the previous version asked here (workflows/dynamic.py: deprecated patches).
CANCEL_OUTRANKS_PATCH = "cancel-outranks-step-failure"  # compose up failed after a cancel
HOST_REASK_PATCH = "host-reask"  # compose up's retries ran out on a silent host
HOST_LEASE_PATCH = "host-lease"  # an apply that reached compose up ends
# Meanwhile the host agent is asked again every REASK_EVERY for its outcome, for up to
# REASK_FOR past the up timeout; the agent's record answers, compose never runs twice.
REASK_EVERY = timedelta(seconds=30)
REASK_FOR = timedelta(minutes=10)


async def run(steps: Steps, inp: ComposeUpInput) -> ComposeUpResult:
    """What compose up did on the host; a Stop when the agent refused or never answered."""
    try:
        return await _ask(steps, inp)
    except Stop as stop:
        # The step failed after a cancel request reached it (the SDK then clears the
        # cancel): the apply was still cancelled, as CONTRACT.md's `cancelled` says.
        if workflow.cancellation_reason() is not None:
            workflow.deprecate_patch(CANCEL_OUTRANKS_PATCH)
            raise asyncio.CancelledError() from None
        if not stop.unreachable:
            raise
        workflow.deprecate_patch(HOST_REASK_PATCH)
        return await _reask(steps, inp, stop)


def judge(up: ComposeUpResult, timeout_s: int) -> None:
    """A Stop unless compose up ended in time with exit code 0."""
    if up.timed_out:
        raise Stop("remote_failed", f"compose up still running after {timeout_s} seconds: killed")
    if up.remote is None or up.remote.returncode != 0:
        code = up.remote.returncode if up.remote else None
        why = f" ({up.remote.error_class})" if up.remote and up.remote.error_class else ""
        raise Stop("remote_failed", f"compose up exited with code {code}{why}")


async def _ask(steps: Steps, inp: ComposeUpInput) -> ComposeUpResult:
    return await steps.run(
        RemoteSteps.compose_up,
        inp,
        remote=True,
        # The transport kills the command at timeout_seconds; this only catches a lost worker.
        start_to_close_timeout=timedelta(seconds=inp.timeout_seconds + 60),
        heartbeat_timeout=timedelta(seconds=inp.target.heartbeat_timeout_seconds),
        retry_policy=REMOTE_RETRY,
        # A cancel returns only once the command is gone on the host, so the
        # rollback never overlaps it.
        cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    )


async def _reask(steps: Steps, inp: ComposeUpInput, stop: Stop) -> ComposeUpResult:
    """The host stopped answering after compose up was sent: compose may have run to
    its end there. Ask the agent again on durable timers (its record of this run
    answers; it never runs compose twice) until it answers or REASK_FOR has passed."""
    host = inp.target.host.name
    until = workflow.now() + timedelta(seconds=inp.timeout_seconds) + REASK_FOR
    while workflow.now() < until:
        steps.details(
            f"{host} stopped answering during compose up ({stop.message}); asking its host "
            f"agent for the outcome every {REASK_EVERY.seconds} s until {until:%H:%M:%S} UTC."
        )
        await workflow.sleep(REASK_EVERY)
        try:
            return await _ask(steps, inp)
        except Stop as again:
            if workflow.cancellation_reason() is not None:
                raise asyncio.CancelledError() from None  # as in run(): the cancel outranks
            if not again.unreachable:
                raise
            stop = again
    raise stop


async def release_lease(steps: Steps, target: Target, module: str) -> None:
    """Free the project's lease on the host once the outcome is recorded. Best effort:
    a lease not freed expires on the host after its TTL."""
    workflow.deprecate_patch(HOST_LEASE_PATCH)
    try:
        await steps.run(
            RemoteSteps.release_lease, ComposePsInput(target=target, module=module), remote=True, **READ_STEP
        )
    except Stop as e:
        workflow.logger.warning("the host lease was not released (it expires on the host): %s", e.message)
