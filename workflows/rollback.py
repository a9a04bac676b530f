"""RollbackWorkflow: an operator puts a module back on the images of the
successful apply before the last one.

1. read the request and plan it (the module's state in Temporal, the platform
   files, the signature when a key is configured);
2. under the project lock, list what the service runs now; nothing to do when
   it already runs those images;
3. the image rollback (the pin on standard input), then the module's health smoke;
4. record it: an audit line, and the module pinned so re-apply leaves it be.

Built from the pieces an apply uses (workflows/steps.py, lock_client.py,
images.py, health_check.py): the same lock, steps and health smoke, so a
rollback and an apply of one compose project never overlap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.lookups import Lookups
    from activities.records import Records
    from platformctl.client import PLATFORM_HOST, PLATFORM_MODULE, PLATFORM_STATUS
    from platformctl.models import (
        ContainerImage,
        HealthConfig,
        HealthRecord,
        ImageSnapshot,
        PlanRollbackInput,
        RecordRollbackInput,
        Rejection,
        RemoteRecord,
        RollbackOutcome,
        RollbackPlan,
        RollbackRequest,
        brief_errors,
    )
    from platformctl.outcomes import OUTCOMES, Outcome
    from platformctl.payload import UnreadablePayload, decode_json
    from platformctl.redact import redact_and_cap
    from workflows import health_check, images
    from workflows.lock_client import ProjectLockClient
    from workflows.messages import first_json, rejection, stop_if_rejected
    from workflows.steps import Steps, Stop, uncancellable

ROLLBACK_WORKFLOW = "RollbackWorkflow"
RollbackStatus = Literal[
    "rolled_back",
    "no_changes",
    "dry_run",
    "blocked",
    "tool_error",
    "remote_failed",
    "unhealthy",
    "approval_mismatch",
    "cancelled",
]
# The apply's table, plus rolled_back: the host changed, so exit 9 like an applied apply.
ROLLBACK_OUTCOMES: dict[str, Outcome] = {"rolled_back": Outcome(9, None), **{k: v for k, v in OUTCOMES.items()}}
SUCCESS = frozenset({"rolled_back", "no_changes", "dry_run"})


class _Ended(Exception):
    def __init__(self, status: RollbackStatus, message: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# A patch the previous version asked here (workflows/dynamic.py: deprecated patches).
PHASE_STATUS_PATCH = "phase-status"


class OperatorRollback:
    """One RollbackWorkflow run; workflows/dynamic.py hands it the run, its signals and
    its status query: its input arrives raw, so any input ends `blocked` instead of
    failing the workflow task."""

    def __init__(self) -> None:
        self.steps = Steps()
        self.result_status: str = "running"
        self.error: str | None = None
        self.module: str | None = None
        self.rejected: Rejection | None = None  # a reject stops a rollback still waiting for the lock
        self.lock = ProjectLockClient(self.steps, self._raise_if_rejected, lambda: self.rejected is not None)
        self.request: RollbackRequest | None = None
        self.plan: RollbackPlan | None = None
        self.snapshot: ImageSnapshot | None = None
        self.remote: RemoteRecord | None = None
        self.health: HealthRecord | None = None
        self.images: list[ContainerImage] = []  # what the service runs after the pin went through

    async def run(self, args: Sequence[RawValue]) -> RollbackOutcome:
        workflow.deprecate_patch(PHASE_STATUS_PATCH)
        workflow.upsert_search_attributes([PLATFORM_STATUS.value_set("running")])
        try:
            await self._roll_back(args)
            outcome = await self._end("rolled_back")
        except _Ended as ended:
            outcome = await self._end(ended.status, ended.message)
        except asyncio.CancelledError:
            await self._end("cancelled", "cancel requested")
            raise
        if outcome.status in SUCCESS:
            return outcome
        raise ApplicationError(
            outcome.error or outcome.status,
            outcome,
            type=ROLLBACK_OUTCOMES[outcome.status].error_type,
            non_retryable=True,
        )

    async def _roll_back(self, args: Sequence[RawValue]) -> None:
        # 1. Read the request and plan it
        self.request = _parse(args)
        self.module = self.request.module[:64]
        workflow.upsert_search_attributes([PLATFORM_MODULE.value_set(self.module)])
        try:
            self.plan = plan = await self.steps.run(Lookups.plan_rollback, PlanRollbackInput(request=self.request))
        except Stop as stop:
            raise _Ended(stop.status, stop.message) from None  # type: ignore[arg-type]
        target = plan.target
        by = redact_and_cap(self.request.approved_by) if self.request.approved_by else "?"
        self.steps.headline = (
            f"Rollback of **{plan.plan.module}@{plan.plan.host}** to `{plan.to_sha[:7]}`, asked by {by}"
        )
        workflow.upsert_search_attributes([PLATFORM_HOST.value_set(plan.plan.host)])
        if not target.execute:
            raise _Ended("dry_run", None)
        try:
            async with self.lock.hold(target, plan.plan.module):
                # 2. What runs now
                self.steps.enter(
                    "applying",
                    f"Listing the images `{target.compose_service}` runs on {target.host.name} before the rollback.",
                )
                self.snapshot = await images.listing(self.steps, target, plan.plan.module)
                if self.snapshot.image_ids() == [plan.image_id]:
                    raise _Ended("no_changes", f"the service already runs {plan.image_id}")
                # 3. The pin, then the health smoke
                await self._pin(plan)
                self.steps.enter(
                    "health_check", f"Rolled back to {plan.image_id}. {health_check.details(plan.plan.health)}"
                )
                self.health = await health_check.watch(
                    self.steps, target, plan.plan.module, plan.plan.health, self._on_health
                )
        except Stop as stop:
            raise _Ended(stop.status, stop.message) from None  # type: ignore[arg-type]

    def on_signal(self, name: str, args: Sequence[RawValue]) -> None:
        if self.lock.on_signal(name, args):
            return
        if name == "reject":
            self.rejected = rejection(first_json(args, default={}))
        else:
            workflow.logger.warning("ignored signal %r to a rollback", name[:100])

    def status(self) -> dict[str, Any]:
        plan = self.plan.plan if self.plan else None
        return {
            "phase": self.steps.phase,
            "status": self.result_status,
            "module": plan.module if plan else self.module,
            "host": plan.host if plan else None,
            "compose_service": plan.compose_service if plan else None,
            "health": self.health.model_dump() if self.health else None,
            "error": self.error,
            "lock": self.lock.lock_id,
        }

    def _raise_if_rejected(self) -> None:
        stop_if_rejected(self.rejected)

    async def _pin(self, plan: RollbackPlan) -> None:
        target = plan.target
        assert self.request is not None
        self.steps.enter(
            "rolling_back",
            f"Putting `{target.compose_service}` on {target.host.name} back on image {plan.image_id} "
            f"(the apply of {plan.to_sha[:7]}).",
        )
        up = await images.pin(
            self.steps,
            target,
            plan.plan.module,
            plan.image_id,
            plan.plan.up_timeout_seconds,
            approval=self.request.approval_of(plan.to_sha),
        )
        self.remote = up.remote
        if up.timed_out:
            raise Stop("remote_failed", f"the rollback's compose up still ran after {plan.plan.up_timeout_seconds} s")
        if up.remote is None or up.remote.returncode != 0:
            gone = up.remote is not None and up.remote.error_class == "image"  # `--pull never`: not on the host
            raise Stop(
                "remote_failed",
                f"image {plan.image_id} is no longer on {target.host.name} (removed or pruned): nothing was changed"
                if gone
                else f"the rollback's compose up exited with code {up.remote.returncode if up.remote else None}",
            )
        self.images = plan.images  # the host runs them now, healthy or not

    def _on_health(self, record: HealthRecord, cfg: HealthConfig) -> None:
        self.health = record
        self.steps.details(health_check.details(cfg, record))

    async def _end(self, status: RollbackStatus, message: str | None = None) -> RollbackOutcome:
        plan = self.plan
        exit_code = ROLLBACK_OUTCOMES[status].exit_code
        outcome = RollbackOutcome(
            status=status,
            exitCode=exit_code,
            module=plan.plan.module if plan else self.module,
            host=plan.plan.host if plan else None,
            compose_service=plan.plan.compose_service if plan else None,
            to_sha=plan.to_sha if plan else None,
            image_id=plan.image_id if plan else None,
            snapshot=self.snapshot,
            remote=self.remote,
            health=self.health,
            error=message,
        )
        info = workflow.info()
        try:
            await uncancellable(
                self.steps.run(
                    Records.record_rollback,
                    RecordRollbackInput(
                        request=self.request,
                        outcome=outcome,
                        images=self.images,
                        workflow_id=info.workflow_id,
                        run_id=info.run_id,
                    ),
                )
            )
        except Stop as failed:
            workflow.logger.error("rollback record not written: %s", failed.message)
        self.steps.phase, self.result_status, self.error = "done", status, message
        workflow.upsert_search_attributes([PLATFORM_STATUS.value_set(status)])
        error_type = ROLLBACK_OUTCOMES[status].error_type
        kind = f"{error_type}, " if error_type else ""
        self.steps.details(f"**{status}** ({kind}exit code {exit_code}){': ' + message if message else ''}")
        return outcome


def _parse(args: Sequence[RawValue]) -> RollbackRequest:
    if len(args) != 1:
        raise _Ended("blocked", f"invalid rollback request: expected one JSON object, got {len(args)} arguments")
    try:
        return RollbackRequest.model_validate(decode_json(args[0].payload))
    except UnreadablePayload as e:
        raise _Ended("blocked", f"invalid rollback request: {e}") from None
    except ValidationError as e:
        raise _Ended("blocked", f"invalid rollback request: {brief_errors(e)}") from None
