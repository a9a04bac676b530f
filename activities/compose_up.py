"""Step 5 activity: `docker compose ... up -d <service>` with a hard timeout.

Run once per activity however often the server retries it (activities/single_flight.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity

from activities.base import Deps, StepActivities, ran, step
from activities.single_flight import SingleFlight
from platformctl import commands
from platformctl.models import ComposeUpInput, ComposeUpResult
from platformctl.outcomes import ApprovalMismatch
from platformctl.policy.approval import check_binding, check_signature
from platformctl.target import check_unchanged


class ComposeUp(StepActivities):
    def __init__(self, deps: Deps, runs: SingleFlight) -> None:
        super().__init__(deps)
        self._runs = runs

    @activity.defn(name="compose_up")
    @step
    async def compose_up(self, inp: ComposeUpInput) -> ComposeUpResult:
        return await self._runs.run((inp.target.host.name, inp.target.project), lambda: self._compose_up(inp))

    async def _compose_up(self, inp: ComposeUpInput) -> ComposeUpResult:
        target = inp.target
        settings = self.deps.settings
        # Built again from the guarded parts, never taken from a string.
        command = commands.compose_up(target.compose_path, target.compose_service)
        # The gate is enforced where the I/O happens, whatever the workflow asked.
        if not (target.execute and settings.execute_remote):
            return ComposeUpResult(executed=False, command=command.render())
        # The last word before a host changes: the files still give this target,
        # and the approval is for this SHA and plan, unexpired, and signed when a key is set.
        check_unchanged(settings, inp.module, target)
        if inp.approval.approved_sha != inp.source_sha:
            raise ApprovalMismatch(f"approval is for {inp.approval.approved_sha[:64]!r}, not {inp.source_sha[:64]!r}")
        key = settings.approval_key()
        check_binding(inp.approval, inp.plan_digest, signed=key is not None)
        check_signature(key, inp.module, inp.approval, datetime.now(UTC))
        activity.logger.info("running on %s: %s", target.host.name, command.render())
        out = await self.deps.transport.run(target.host, command, timeout_s=inp.timeout_seconds)
        return ran(command, out)
