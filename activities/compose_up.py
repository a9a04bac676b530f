"""Step 5 activity: compose up, through the host agent's `apply` verb.

The agent runs `docker compose -f FILE up -d SERVICE` at most once for this
workflow run and never beside another compose run of the project, whatever
the control plane does (host/platform_agent.py): a retry after a lost
worker, a dropped connection or a forged lock hand-over gets the recorded
outcome, or waits for the run still going. Compose outlives the SSH channel,
so this activity returns, even when cancelled, only once the host has an
outcome: the rollback never overlaps it. Before it, the agent's `check` says
whether the host's lease TTL outlasts the module's health poll.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from temporalio import activity

from activities import host_agent
from activities.base import Deps, StepActivities, step
from activities.single_flight import SingleFlight
from platformctl import commands
from platformctl.models import ComposeUpInput, ComposeUpResult, Target
from platformctl.outcomes import ApprovalMismatch, PolicyViolation, RemoteFailed
from platformctl.policy.approval import check_binding, check_signature
from platformctl.policy.remote_output import AgentAnswer
from platformctl.target import check_unchanged

# The agent's own steps around compose up: compose config, the lock wait, git.
AGENT_MARGIN_S = 45
CHECK_TIMEOUT_S = 30


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
        # The run id is the server's, never the input's: the agent's once-per-run key.
        run = activity.info().workflow_run_id or ""
        # Built again from the guarded parts, never taken from a string.
        command = commands.agent_apply(
            run, inp.timeout_seconds, target.compose_path, target.compose_service,
            inp.source_sha if target.host.verify_checkout else None,
        )  # fmt: skip
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
        if inp.poll_seconds is not None:
            await self._lease_outlasts_polls(target, inp.poll_seconds)
        activity.logger.info("running on %s: %s", target.host.name, command.render())
        try:
            answer = await self._outcome(target, command, run, inp.timeout_seconds)
        except asyncio.CancelledError:
            # Compose goes on without us: wait for its outcome before the cancel
            # reaches the workflow and its rollback.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # so the transport's own timeouts still tell themselves apart
            await self._outcome(target, command, run, inp.timeout_seconds)
            raise
        return host_agent.ran(command, answer)

    async def _lease_outlasts_polls(self, target: Target, poll_s: int) -> None:
        """Each health poll renews the run's lease on the host: one that lapses between two
        polls restarts the stable window every poll. Refused before anything runs."""
        try:
            answer = await host_agent.ask(
                self.deps.transport, target, commands.agent_check(), None, "check", timeout_s=CHECK_TIMEOUT_S
            )
        except host_agent.OlderAgent:
            return  # `apply --lease` is refused too, and says why
        ttl = answer.lease_ttl
        if ttl is not None and poll_s * 3 > ttl:
            raise PolicyViolation(
                f"{target.host.name}: health.poll_seconds {poll_s} is more than a third of the host's lease TTL "
                f"({ttl} s), which each poll renews: lower it to {ttl // 3} or raise the gate's --lease-ttl; "
                "nothing ran"
            )

    async def _outcome(self, target: Target, command: commands.RemoteCommand, run: str, timeout_s: int) -> AgentAnswer:
        """Ask the agent until it has this run's outcome; busy waits, bounded by the up timeout."""
        try:
            answer = await host_agent.ask(
                self.deps.transport, target, command, run, "apply",
                timeout_s=timeout_s + AGENT_MARGIN_S, busy_for_s=timeout_s + AGENT_MARGIN_S,
            )  # fmt: skip
        except host_agent.OlderAgent:
            raise PolicyViolation(
                f"{target.host.name}: host agent older than v{commands.AGENT_PROTOCOL} (the gate refused "
                "`apply --lease`): install host/ on the host (README, upgrade)"
            ) from None
        if answer.answer == "busy":
            raise PolicyViolation(
                f"{target.host.name}: compose project {target.project} busy on the host "
                f"(held by {host_agent.holder(answer, run)}); nothing ran"
            )
        return _final(target.host.name, target, answer)


def _final(host: str, target: Target, answer: AgentAnswer) -> AgentAnswer:
    if answer.answer == "ran":
        if answer.replayed:
            activity.logger.warning("%s: compose up already ran for this run; the agent's record answered", host)
        return answer
    if answer.answer == "interrupted":
        raise RemoteFailed(
            f"{host}: compose up of this run was interrupted on the host (the agent stopped before it "
            "finished); it is never run twice: see `platform-apply logs`"
        )
    if answer.answer == "run_conflict":
        raise PolicyViolation(f"{host}: the host agent has another request recorded for this run")
    if answer.reason == "checkout":
        held = answer.head or "something that is not a commit SHA"
        dirty = " with local changes" if answer.dirty else ""
        raise PolicyViolation(f"{host}:{target.host.remote_root} holds commit {held}{dirty}, not the approved one")
    if answer.answer == "lease_lost" or answer.reason in ("no_snapshot", "undefined_service"):
        raise PolicyViolation(f"{host}: the host agent answered {answer.answer} to `apply`")
    if answer.reason == "compose_config":
        raise RemoteFailed(f"{host}: compose cannot load {target.compose_path} ({answer.error_class}); nothing ran")
    raise RemoteFailed(f"{host}: the host agent cannot record the run (host storage); nothing ran")
