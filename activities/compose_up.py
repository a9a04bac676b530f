"""Step 5 activity: `docker compose ... up -d <service>` with a hard timeout."""

from __future__ import annotations

from temporalio import activity

from activities.base import StepActivities, heartbeating, step
from platformctl import commands
from platformctl.models import ComposeUpInput, ComposeUpResult, RemoteRecord


class ComposeUp(StepActivities):
    @activity.defn(name="compose_up")
    @step
    async def compose_up(self, inp: ComposeUpInput) -> ComposeUpResult:
        target = inp.target
        # Built again from the guarded parts, never taken from a string.
        command = commands.compose_up(target.compose_path, target.compose_service)
        # The gate is enforced where the I/O happens, whatever the workflow asked.
        if not (target.execute and self.deps.settings.execute_remote):
            return ComposeUpResult(executed=False, command=command.render())
        activity.logger.info("running on %s: %s", target.host.name, command.render())
        async with heartbeating():
            out = await self.deps.transport.run(target.host, command, timeout_s=inp.timeout_seconds)
        return ComposeUpResult(
            executed=True,
            command=command.render(),
            timed_out=out.timed_out,
            remote=RemoteRecord(
                returncode=out.returncode, stdout=out.stdout, stderr=out.stderr, duration_s=round(out.duration_s, 3)
            ),
        )
