"""Step 6 activity: one read-only look at the service (the workflow polls)."""

from __future__ import annotations

from temporalio import activity

from activities.base import StepActivities, step
from platformctl import commands
from platformctl.models import ComposePsInput, ServiceObservation
from platformctl.policy.health import UnreadablePs, observe
from platformctl.policy.remote_output import failure
from platformctl.target import check_unchanged

PS_TIMEOUT_S = 30


class HealthSmoke(StepActivities):
    @activity.defn(name="compose_ps")
    @step
    async def compose_ps(self, inp: ComposePsInput) -> ServiceObservation:
        target = inp.target
        check_unchanged(self.deps.settings, inp.module, target)
        command = commands.compose_ps(target.compose_path, target.compose_service)
        out = await self.deps.transport.run(target.host, command, timeout_s=PS_TIMEOUT_S)
        if out.returncode == commands.GATE_REFUSED:
            # A gate from before --all (hosts are upgraded after workers): ask as it
            # allows, which shows no stopped container, rather than never seeing one.
            activity.logger.warning("%s: the host's gate refused ps --all; install the current gate", target.host.name)
            command = commands.compose_ps_running(target.compose_path, target.compose_service)
            out = await self.deps.transport.run(target.host, command, timeout_s=PS_TIMEOUT_S)
        if out.returncode != 0:
            # Not fatal by itself: the service may still come up before the deadline.
            why = failure(out.returncode, out.timed_out, out.stdout, out.stderr)
            return ServiceObservation(state="", health="", error=f"compose ps {why}")
        try:
            return observe(out.stdout, target.compose_service)
        except UnreadablePs as e:
            return ServiceObservation(state="", health="", error=str(e))
