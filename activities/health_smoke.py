"""Step 6 activity: one read-only look at the service (the workflow polls).

Asked of the host agent's `health` verb, which also renews the apply's lease on
the project; a host whose gate predates the verb is asked with `compose ps`."""

from __future__ import annotations

from temporalio import activity

from activities import host_agent
from activities.base import StepActivities, step
from platformctl import commands
from platformctl.models import ComposePsInput, ServiceObservation, Target
from platformctl.policy.health import UnreadablePs, observe, observe_facts
from platformctl.policy.remote_output import failure
from platformctl.target import check_unchanged

PS_TIMEOUT_S = 30


class HealthSmoke(StepActivities):
    @activity.defn(name="compose_ps")
    @step
    async def compose_ps(self, inp: ComposePsInput) -> ServiceObservation:
        target = inp.target
        check_unchanged(self.deps.settings, inp.module, target)
        # The run id is the server's, never the input's: the agent renews this run's lease only.
        run = activity.info().workflow_run_id or ""
        command = commands.agent_health(run, target.compose_path, target.compose_service)
        try:
            answer = await host_agent.ask(self.deps.transport, target, command, run, "health", timeout_s=PS_TIMEOUT_S)
        except host_agent.OlderAgent:
            return await self._compose_ps(target)
        if answer.answer == "lease_lost":
            return ServiceObservation(state="", health="", lease_lost_to=answer.holder or "0" * 36)
        if answer.answer == "busy":
            # Not fatal by itself: the next poll asks again.
            busy = f"host busy (held by {host_agent.holder(answer, run)})"
            return ServiceObservation(state="", health="", error=busy)
        if answer.answer != "observed":
            return ServiceObservation(state="", health="", error=f"the host agent could not look ({answer.answer})")
        seen = observe_facts(answer.containers)
        return seen.model_copy(update={"retaken": answer.lease == "retaken", "logs_kept": answer.logs_kept > 0})

    async def _compose_ps(self, target: Target) -> ServiceObservation:
        """A host whose agent predates `health`: compose ps, as hosts are upgraded after workers."""
        command = commands.compose_ps(target.compose_path, target.compose_service)
        out = await self.deps.transport.run(target.host, command, timeout_s=PS_TIMEOUT_S)
        if out.returncode == commands.GATE_REFUSED:
            # A gate from before --all: ask as it allows, which shows no stopped container,
            # rather than never seeing one.
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
