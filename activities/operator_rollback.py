"""RollbackWorkflow's own steps: what to go back to, and the record afterwards.

`plan_rollback` reads the module's state in Temporal (the images of the
successful apply before the last one), derives the target from the platform
files, and, when a signing key is configured, checks the request's signature
like an approval's and the seal of the record whose images it would pin.
`record_rollback` appends the audit line and, when the host changed, marks the
module as pinned by the rollback, so ReapplyWorkflow leaves it alone until the
next approved apply.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from temporalio import activity
from temporalio.service import RPCError, RPCStatusCode

from activities.base import StepActivities, step
from activities.validate_plan import validated
from platformctl.config import load_module
from platformctl.models import (
    ImageSnapshot,
    ModuleEvent,
    ModuleState,
    PinRecord,
    PlanRollbackInput,
    RecordRollbackInput,
    RollbackPlan,
)
from platformctl.module_state import module_state_id, record_event
from platformctl.notify import Notification, send
from platformctl.outcomes import PolicyViolation
from platformctl.policy.approval import check_signature
from platformctl.policy.record_seal import check_seal
from platformctl.policy.snapshot import rollback_image
from platformctl.state import AuditLine, append_audit, now_iso
from platformctl.target import derive_target

log = logging.getLogger("platform.apply")


class PlanRollback(StepActivities):
    @activity.defn(name="plan_rollback")
    @step
    async def plan_rollback(self, inp: PlanRollbackInput) -> RollbackPlan:
        req = inp.request
        settings = self.deps.settings
        module = load_module(settings.platform_root, req.module)
        target = derive_target(settings, req.module)
        state = await self._state(req.module)
        previous = state.previous_applied if state else None
        if previous is None:
            raise PolicyViolation(
                f"module {req.module!r}: no successful apply before the last one is recorded: nothing to go back to"
            )
        if req.to_sha is not None and req.to_sha != previous.sha:
            raise PolicyViolation(
                f"module {req.module!r}: asked to go back to {req.to_sha[:40]!r}, but the successful apply "
                f"before the last one is {previous.sha}"
            )
        recorded = (previous.host, previous.compose_service)
        if None not in recorded and recorded != (target.host.name, target.compose_service):
            # The module moved since: those images are another service's, maybe on another host.
            raise PolicyViolation(
                f"module {req.module!r}: the apply of {previous.sha[:12]} ran service {previous.compose_service!r} "
                f"on {previous.host}; the module now names {target.compose_service!r} on {target.host.name}"
            )
        if not previous.images:
            raise PolicyViolation(
                f"module {req.module!r}: the apply of {previous.sha[:12]} recorded no images "
                "(it ran before image snapshots, or the service ran no container)"
            )
        try:
            image_id = rollback_image(ImageSnapshot(images=previous.images))
        except ValueError as e:
            raise PolicyViolation(f"module {req.module!r}: {e}") from None
        # Signed like an approval of the SHA whose images come back, with no PR.
        key = settings.approval_key()
        check_signature(key, req.module, req.approval_of(previous.sha), datetime.now(UTC))
        check_seal(key, req.module, previous)
        # A rollback that fails is reported, never rolled back again.
        plan = validated(module, plan_digest="", has_changes=True, destructive=False, rollback="record")
        return RollbackPlan(plan=plan, target=target, to_sha=previous.sha, image_id=image_id, images=previous.images)

    async def _state(self, module: str) -> ModuleState | None:
        handle = self.deps.client.get_workflow_handle(module_state_id(self.deps.settings.task_queue, module))
        try:
            state: ModuleState | None = await handle.query("state", result_type=ModuleState)
            return state
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return None
            raise


class RecordRollback(StepActivities):
    @activity.defn(name="record_rollback")
    @step
    async def record_rollback(self, inp: RecordRollbackInput) -> None:
        out, req = inp.outcome, inp.request
        at = now_iso()
        if req is not None and inp.images and out.module:
            # The host runs older images now: re-apply must not undo that behind the operator's back.
            pin = PinRecord(
                sha=out.to_sha, images=inp.images, by=req.approved_by, reason=req.reason,
                workflow_id=inp.workflow_id, at=at,
            )
            event = ModuleEvent(module=out.module, pinned=pin)
            await record_event(self.deps.client, self.deps.settings.task_queue, event)
        written = append_audit(
            self.deps.settings.state_dir,
            AuditLine(
                at=at, workflow_id=inp.workflow_id, run_id=inp.run_id, module=out.module, host=out.host,
                status=out.status, exitCode=out.exitCode, source_sha=out.to_sha,
                approved_by=req.approved_by if req else None, error=out.error,
                snapshot=out.snapshot.images if out.snapshot else None, images=inp.images or None,
                reason=req.reason if req else None,
            ),
        )
        if not written:
            return  # a re-run of this step: this run's outcome was already recorded and reported
        error = f": {out.error.splitlines()[0][:300]}" if out.error else ""
        log.info(
            "rollback %s@%s %s exit=%d to=%s image=%s workflow=%s%s",
            out.module, out.host, out.status, out.exitCode, out.to_sha, out.image_id, inp.workflow_id, error,
        )
        if out.status in ("remote_failed", "unhealthy", "tool_error"):
            await send(
                Notification(
                    event="rollback_failed", module=out.module, host=out.host, status=out.status,
                    exitCode=out.exitCode, workflow_id=inp.workflow_id, error=out.error, at=at,
                    idempotency_key=f"{activity.info().workflow_run_id}/rollback_failed",
                )
            )
