"""After step 7: the apply frees its lease on the host's compose project, once
its outcome is recorded, so the next apply of the project need not wait for it
to expire. A host whose agent predates leases has none to free."""

from __future__ import annotations

from temporalio import activity

from activities import host_agent
from activities.base import StepActivities, step
from platformctl import commands
from platformctl.models import ComposePsInput

RELEASE_TIMEOUT_S = 30


class ReleaseLease(StepActivities):
    @activity.defn(name="release_lease")
    @step
    async def release_lease(self, inp: ComposePsInput) -> int:
        """How many leases the host freed (0: none was held, or an older agent)."""
        target = inp.target
        if not (target.execute and self.deps.settings.execute_remote):
            return 0  # nothing was changed on the host, so nothing was leased
        run = activity.info().workflow_run_id or ""
        command = commands.agent_release(run)
        try:
            answer = await host_agent.ask(
                self.deps.transport, target, command, run, "release", timeout_s=RELEASE_TIMEOUT_S
            )
        except host_agent.OlderAgent:
            return 0
        return answer.released or 0
