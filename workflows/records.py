"""Step 7, the records: what the apply did so far (`Outcome`, which its result
reports) written as the module's state in Temporal, its status file and its
audit line. An outcome whose record cannot be written stands: the record is
tried again on durable timers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.persist_state import PersistState
    from platformctl.models import (
        ApplyResult,
        HealthRecord,
        ImageSnapshot,
        PersistStateInput,
        RemoteRecord,
        RollbackRecord,
        ValidatedPlan,
    )
    from platformctl.outcomes import OUTCOMES, Status
    from workflows.steps import Steps, Stop

# Patches the previous version asked here (workflows/apply.py: deprecated patches).
DURABLE_RECORDS_PATCH = "durable-records"  # a record that could not be written
# A record that cannot be written (full disk, broken mount) is tried again on durable
# timers, first after RECORD_RETRY_FIRST_S, doubling up to RECORD_RETRY_MAX_S, for a day.
RECORD_RETRY_FIRST_S = 5
RECORD_RETRY_MAX_S = 600
RECORD_RETRY_FOR_S = 86400


@dataclass
class Outcome:
    """What the apply did so far: its result reports it, its records keep it."""

    module: str | None = None
    command: str | None = None
    remote: RemoteRecord | None = None
    health: HealthRecord | None = None
    snapshot: ImageSnapshot | None = None  # taken under the lock, before compose up
    images: ImageSnapshot | None = None  # after a healthy apply
    rollback: RollbackRecord | None = None
    checkout_verified: bool | None = None
    state_artifact: str | None = None
    error: str | None = None
    pending: str | None = None  # why the outcome's record is not written yet

    def result(self, status: Status, plan: ValidatedPlan | None, error: str | None = None) -> ApplyResult:
        return ApplyResult(
            status=status,
            exitCode=OUTCOMES[status].exit_code,
            module=plan.module if plan else self.module,
            host=plan.host if plan else None,
            compose_service=plan.compose_service if plan else None,
            command=self.command,
            remote=self.remote,
            health=self.health,
            state_artifact=self.state_artifact,
            rollback=self.rollback,
            error=error,
            checkout_verified=self.checkout_verified,
            snapshot=self.snapshot,
            images=self.images,
        )


async def write(steps: Steps, outcome: Outcome, persist: PersistStateInput) -> None:
    """Write the outcome's records. When they cannot be written the outcome stands:
    `outcome.pending` says why, and `retry` tries later."""
    try:
        persisted = await steps.run(PersistState.persist_state, persist, local=True)
    except Stop as failed:
        workflow.deprecate_patch(DURABLE_RECORDS_PATCH)
        outcome.pending = failed.message
        return
    outcome.pending = None
    outcome.state_artifact = persisted.state_artifact or outcome.state_artifact


async def retry(outcome: Outcome, status: Status, write_again: Callable[[], Awaitable[None]]) -> None:
    """Write a pending record again on durable timers, backing off, for a day."""
    waited, delay = 0, RECORD_RETRY_FIRST_S
    while outcome.pending is not None and waited < RECORD_RETRY_FOR_S:
        workflow.set_current_details(f"**{status}**; its record is pending, next try in {delay} s: {outcome.pending}")
        await workflow.sleep(delay)
        waited, delay = waited + delay, min(2 * delay, RECORD_RETRY_MAX_S)
        await write_again()
    if outcome.pending is not None:
        workflow.logger.error("record of %s not written after %d s: %s", status, waited, outcome.pending)
