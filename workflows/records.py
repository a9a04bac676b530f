"""Step 7, the records: what the apply did so far (`Outcome`, which its result
reports) written as the module's state in Temporal, its status file and its
audit line. An outcome whose record cannot be written stands: the record is
tried again on durable timers. A failure after compose up started first puts
the service back on its snapshot's image, where the module's policy says so."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.records import Records
    from platformctl.models import (
        ApplyInput,
        ApplyResult,
        Approval,
        HealthRecord,
        ImageSnapshot,
        PersistStateInput,
        Rejection,
        RemoteRecord,
        RollbackInput,
        RollbackRecord,
        Target,
        ValidatedPlan,
    )
    from platformctl.outcomes import OUTCOMES, Status
    from workflows import images
    from workflows.steps import LOCAL_STEP, Steps, Stop, uncancellable

# Patches the previous version asked here (workflows/dynamic.py: deprecated patches).
DURABLE_RECORDS_PATCH = "durable-records"  # a record that could not be written
# A record that cannot be written (full disk, broken mount) is tried again on durable
# timers, first after RECORD_RETRY_FIRST_S, doubling up to RECORD_RETRY_MAX_S, for a day.
RECORD_RETRY_FIRST_S = 5
RECORD_RETRY_MAX_S = 600
RECORD_RETRY_FOR_S = 86400
# Failures after compose up started that put the service back on its snapshot's image.
ROLLED_BACK: frozenset[Status] = frozenset({"remote_failed", "unhealthy", "cancelled"})


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


def persist_input(
    outcome: Outcome,
    status: Status,
    plan: ValidatedPlan | None,
    inp: ApplyInput | None,
    plan_raw: dict[str, Any] | None,
    approval: Approval | None,
    rejection: Rejection | None,
) -> PersistStateInput:
    info = workflow.info()
    return PersistStateInput(
        result=outcome.result(status, plan, outcome.error),
        source_sha=inp.plan.source_sha if inp else None,
        approved_pr=approval.approved_pr if approval else None,
        plan_digest=plan.plan_digest if plan else None,
        workflow_id=info.workflow_id,
        run_id=info.run_id,
        approved_by=approval.approved_by if approval else None,
        rejected_by=rejection.rejected_by if rejection else None,
        plan=inp.plan if inp else None,
        plan_raw=plan_raw,
        approval=approval,
        # Both ends stamped by the server: no clock skew, and no describe call to learn the start.
        duration_s=round((workflow.now() - info.workflow_start_time).total_seconds(), 3),
    )


async def write(steps: Steps, outcome: Outcome, persist: PersistStateInput) -> None:
    """Write the outcome's records. When they cannot be written the outcome stands:
    `outcome.pending` says why, and `retry` tries later."""
    try:
        persisted = await steps.run(Records.persist_state, persist, local=True)
    except Stop as failed:
        workflow.deprecate_patch(DURABLE_RECORDS_PATCH)
        outcome.pending = failed.message
        return
    outcome.pending = None
    outcome.state_artifact = persisted.state_artifact or outcome.state_artifact


async def retry(
    steps: Steps, outcome: Outcome, status: Status, write_again: Callable[[], Awaitable[None]]
) -> None:
    """Write a pending record again on durable timers, backing off, for a day."""
    waited, delay = 0, RECORD_RETRY_FIRST_S
    while outcome.pending is not None and waited < RECORD_RETRY_FOR_S:
        steps.details(f"**{status}**; its record is pending, next try in {delay} s: {outcome.pending}")
        await workflow.sleep(delay)
        waited, delay = waited + delay, min(2 * delay, RECORD_RETRY_MAX_S)
        await write_again()
    if outcome.pending is not None:
        workflow.logger.error("record of %s not written after %d s: %s", status, waited, outcome.pending)


async def roll_back(
    steps: Steps,
    outcome: Outcome,
    plan: ValidatedPlan | None,
    source_sha: str,
    approval: Approval | None,
    status: Status,
    message: str,
    target: Target,
    restore: bool,
) -> None:
    """Put the service back on the image it ran before (where the snapshot, the
    module's policy and `restore` allow), then record the failure. Neither is cut
    short by a cancel; the apply's status stays the failure it was."""
    snapshot = outcome.snapshot
    policy = plan.rollback if plan and snapshot is not None and restore else "record"
    image = None
    if plan and snapshot is not None and policy == "image" and status in ROLLED_BACK:
        image = await uncancellable(images.restore(steps, target, plan, snapshot))
    info = workflow.info()
    try:
        rollback = await uncancellable(
            steps.run(
                Records.rollback,
                RollbackInput(
                    result=outcome.result(status, plan, message),
                    source_sha=source_sha,
                    workflow_id=info.workflow_id,
                    run_id=info.run_id,
                    approved_pr=approval.approved_pr if approval else None,
                    approved_by=approval.approved_by if approval else None,
                    plan_digest=plan.plan_digest if plan else None,
                    image=image,
                    policy=policy,
                ),
                **LOCAL_STEP,
            )
        )
        outcome.rollback = rollback
        outcome.state_artifact = rollback.state_artifact
    except Stop as failed:
        workflow.logger.error("rollback could not record the failure: %s", failed.message)
        outcome.rollback = RollbackRecord(
            reason=f"{message} (rollback record failed: {failed.message})",
            last_good_sha=None,
            state_artifact=None,
            action=policy,
            image=image,
        )
