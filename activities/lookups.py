"""Reads of what Temporal holds: a lock's holder, and the module states that
re-apply and an operator's rollback start from. Only typed verdicts go to history."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.base import StepActivities, step
from activities.checks import validated
from platformctl.config import load_hosts, load_module
from platformctl.models import (
    PROJECT_LOCK_WORKFLOW,
    ImageSnapshot,
    LockHolder,
    LockHolderInput,
    ModuleState,
    PlanReapplyInput,
    PlanRollbackInput,
    ReapplyCandidate,
    RollbackPlan,
)
from platformctl.module_state import module_state_id, read_state
from platformctl.outcomes import ApplyError, PolicyViolation
from platformctl.policy.approval import check_signature
from platformctl.policy.record_seal import check_seal
from platformctl.policy.snapshot import rollback_image
from platformctl.target import derive_target

MODULE_STATES = "WorkflowType = 'ModuleStateWorkflow' AND ExecutionStatus = 'Running' AND TaskQueue = '{}'"


class Lookups(StepActivities):
    @activity.defn(name="describe_lock_holder")
    @step
    async def describe_lock_holder(self, inp: LockHolderInput) -> LockHolder:
        """Step 5's lock, when its id is taken: is it held by this task queue's lock? Anyone
        with namespace access can start a workflow under a lock's id (on a queue no worker
        polls, say); one describe tells such a squatter apart from a real holder."""
        try:
            described = await self.deps.client.get_workflow_handle(inp.lock_id).describe()
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return LockHolder(kind="none")
            raise
        if described.status != WorkflowExecutionStatus.RUNNING:
            return LockHolder(kind="none")  # it ended in between: the lock is free
        if described.workflow_type != PROJECT_LOCK_WORKFLOW:
            return LockHolder(kind="other_type")
        if described.task_queue != self.deps.settings.task_queue:
            return LockHolder(kind="other_queue")
        return LockHolder(kind="ours")

    @activity.defn(name="plan_reapply")
    @step
    async def plan_reapply(self, inp: PlanReapplyInput) -> list[ReapplyCandidate]:
        """ReapplyWorkflow's look at what to re-apply: recorded state and platform files, read once."""
        # Each module once: a second start of an apply still running would fail the
        # re-apply, and its close would terminate that apply mid compose up.
        modules = list(dict.fromkeys(inp.modules)) if inp.modules is not None else await self._recorded_modules()
        return [await self._candidate(m) for m in modules]

    async def _recorded_modules(self) -> list[str]:
        queue = self.deps.settings.task_queue
        prefix = module_state_id(queue, "")
        query = MODULE_STATES.format(queue.replace("'", ""))
        found = [wf.id[len(prefix):] async for wf in self.deps.client.list_workflows(query) if wf.id.startswith(prefix)]
        return sorted(m for m in found if m)

    async def _candidate(self, module: str) -> ReapplyCandidate:
        root = self.deps.settings.platform_root
        try:
            target = derive_target(self.deps.settings, module)
            host = load_hosts(root)[load_module(root, module).host]
        except ApplyError as e:
            return ReapplyCandidate(module=module, state=None, problem=str(e))
        return ReapplyCandidate(
            module=module,
            state=await self._state(module),
            host=host.name,
            lane=f"{host.name}/{target.project}",
            verify_checkout=host.verify_checkout,
        )

    @activity.defn(name="plan_rollback")
    @step
    async def plan_rollback(self, inp: PlanRollbackInput) -> RollbackPlan:
        """RollbackWorkflow's plan: the images of the successful apply before the last one, the
        target from the platform files and, with a signing key, the request's signature (like an
        approval's) and the seal of the record whose images it would pin."""
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
        return await read_state(self.deps.client, self.deps.settings.task_queue, module)
