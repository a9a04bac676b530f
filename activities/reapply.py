"""ReapplyWorkflow's look at what to re-apply: recorded state and platform files, read once."""

from __future__ import annotations

from temporalio import activity
from temporalio.service import RPCError, RPCStatusCode

from activities.base import StepActivities, step
from platformctl.config import load_hosts, load_module
from platformctl.models import ModuleState, PlanReapplyInput, ReapplyCandidate
from platformctl.module_state import module_state_id
from platformctl.outcomes import ApplyError
from platformctl.target import derive_target

MODULE_STATES = "WorkflowType = 'ModuleStateWorkflow' AND ExecutionStatus = 'Running' AND TaskQueue = '{}'"


class Reapply(StepActivities):
    @activity.defn(name="plan_reapply")
    @step
    async def plan_reapply(self, inp: PlanReapplyInput) -> list[ReapplyCandidate]:
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

    async def _state(self, module: str) -> ModuleState | None:
        handle = self.deps.client.get_workflow_handle(module_state_id(self.deps.settings.task_queue, module))
        try:
            state: ModuleState | None = await handle.query("state", result_type=ModuleState)
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        return state

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
