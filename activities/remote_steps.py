"""The steps that reach a host: over the transport, through the host agent's verbs.

Every command is built by `platformctl.commands` from the guarded target,
never from a string, and each step checks first that the platform files
still give that target. The host agent (host/platform_agent.py) runs compose
up and the rollback pin at most once per workflow run and never beside
another compose run of the project; this worker's `SingleFlight` keeps a
retried attempt on this worker from running beside the one still going.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from temporalio import activity

from activities import host_agent
from activities.base import Deps, StepActivities, ran, step
from activities.single_flight import SingleFlight
from platformctl import commands
from platformctl.models import (
    ComposePsInput,
    ComposeUpInput,
    ComposeUpResult,
    ImageSnapshot,
    RollbackImagesInput,
    ServiceObservation,
    SnapshotInput,
    Target,
    VerifyCheckoutInput,
)
from platformctl.outcomes import ApprovalMismatch, PolicyViolation, RemoteFailed
from platformctl.policy.approval import check_binding, check_signature
from platformctl.policy.health import UnreadablePs, observe, observe_facts
from platformctl.policy.plan import SHA
from platformctl.policy.remote_output import AgentAnswer, failure
from platformctl.policy.snapshot import UnreadableImages, parse_images
from platformctl.target import check_unchanged

# The agent's own steps around compose up: compose config, the lock wait, git.
AGENT_MARGIN_S = 45
READ_TIMEOUT_S = 30  # a read, or a lease call: seconds on a live host


def _syncs(target: Target, reapply: bool) -> bool:
    """Whether the agent brings the checkout to the approved SHA first: on hosts with sync_checkout,
    never for a re-apply's child, which the contract runs only where the checkout already is at
    that SHA: it must not move the checkout back."""
    return target.host.sync_checkout and not reapply


class RemoteSteps(StepActivities):
    def __init__(self, deps: Deps) -> None:
        super().__init__(deps)
        # Compose up's and the rollback's: one run however often the server retries, none overlapping.
        self.compose_runs = SingleFlight()

    @activity.defn(name="verify_checkout")
    @step
    async def verify_checkout(self, inp: VerifyCheckoutInput) -> None:
        """Before compose up, where hosts.yaml asks for it: the host's checkout is the
        approved commit, or the approved plan is not what would run."""
        check_unchanged(self.deps.settings, inp.module, inp.target)
        host = inp.target.host
        if _syncs(inp.target, inp.reapply):
            return  # the agent brings it there first, then checks it under the lease, right before compose up
        out = await self.deps.transport.run(host, commands.git_head(host.remote_root), timeout_s=READ_TIMEOUT_S)
        head = out.stdout.strip()
        if out.returncode != 0:
            raise PolicyViolation(
                f"cannot confirm the checkout on {host.name}: git rev-parse "
                f"{failure(out.returncode, out.timed_out, out.stdout, out.stderr)}"
            )
        if head != inp.approved_sha:
            # Only a SHA is repeated: anything else a host printed stays there.
            held = repr(head) if SHA.fullmatch(head) else "something that is not a commit SHA"
            raise PolicyViolation(
                f"{host.name}:{host.remote_root} holds commit {held}, not the approved {inp.approved_sha}"
            )

    @activity.defn(name="compose_images")
    @step
    async def compose_images(self, inp: SnapshotInput) -> ImageSnapshot:
        """The images the service runs: what an image rollback goes back to. A listing that
        fails stops the apply before compose up: a service we could not put back is not changed."""
        target = inp.target
        check_unchanged(self.deps.settings, inp.module, target)
        command = commands.compose_images(target.compose_path, target.compose_service)
        out = await self.deps.transport.run(target.host, command, timeout_s=READ_TIMEOUT_S)
        if out.returncode != 0:
            why = failure(out.returncode, out.timed_out, out.stdout, out.stderr)
            raise RemoteFailed(f"compose images {why} on {target.host.name}")
        try:
            return parse_images(out.stdout)
        except UnreadableImages as e:
            raise RemoteFailed(f"{e} (on {target.host.name})") from None

    @activity.defn(name="compose_up")
    @step
    async def compose_up(self, inp: ComposeUpInput) -> ComposeUpResult:
        """Step 5, through the agent's `apply`. Compose outlives the SSH channel, so this returns,
        even when cancelled, only once the host has an outcome: the rollback never overlaps it."""
        key = (inp.target.host.name, inp.target.project)
        return await self.compose_runs.run(key, lambda: self._compose_up(inp))

    async def _compose_up(self, inp: ComposeUpInput) -> ComposeUpResult:
        target = inp.target
        settings = self.deps.settings
        # The run id is the server's, never the input's: the agent's once-per-run key.
        run = activity.info().workflow_run_id or ""
        if inp.action == "remove":
            # A plan validated before remove was refused: `up -d` would leave the service running.
            raise PolicyViolation("remove is not supported by this worker yet; nothing ran")
        # Built again from the guarded parts, never taken from a string.
        command = commands.agent_apply(
            run, inp.timeout_seconds, target.compose_path, target.compose_service,
            inp.source_sha if target.host.verify_checkout else None,
            sync=_syncs(target, inp.reapply), action=inp.action,
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
            answer = await self._up_outcome(target, command, run, inp.timeout_seconds)
        except asyncio.CancelledError:
            # Compose goes on without us: wait for its outcome before the cancel
            # reaches the workflow and its rollback.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # so the transport's own timeouts still tell themselves apart
            await self._up_outcome(target, command, run, inp.timeout_seconds)
            raise
        return host_agent.ran(command, answer)

    async def _lease_outlasts_polls(self, target: Target, poll_s: int) -> None:
        """Each health poll renews the run's lease on the host: one that lapses between two
        polls restarts the stable window every poll. Refused before anything runs."""
        try:
            answer = await host_agent.ask(
                self.deps.transport, target, commands.agent_check(), None, "check", timeout_s=READ_TIMEOUT_S
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

    async def _up_outcome(
        self, target: Target, command: commands.RemoteCommand, run: str, timeout_s: int
    ) -> AgentAnswer:
        """Ask the agent until it has this run's outcome; busy waits, bounded by the up timeout."""
        sync = "--sync" in command.argv
        margin = AGENT_MARGIN_S + (commands.SYNC_FETCH_TIMEOUT_S if sync else 0)
        try:
            answer = await host_agent.ask(
                self.deps.transport, target, command, run, "apply",
                timeout_s=timeout_s + margin, busy_for_s=timeout_s + margin,
            )  # fmt: skip
        except host_agent.OlderAgent:
            if "--action" in command.argv:
                action = command.argv[-1]  # one of commands.ACTION_FLAGS' fixed values
                raise PolicyViolation(
                    f"{target.host.name}: host agent older than v{commands.ACTION_PROTOCOL} (the gate refused "
                    f"`apply --action {action}`, the plan's action): install host/ on the host (docs/upgrade.md); "
                    "nothing ran"
                ) from None
            if sync:
                raise PolicyViolation(
                    f"{target.host.name}: host agent older than v{commands.SYNC_PROTOCOL} (the gate refused "
                    "`apply --sync`, asked for sync_checkout): install host/ on the host (host/install "
                    "--allow-sync, docs/security.md); nothing ran"
                ) from None
            raise PolicyViolation(
                f"{target.host.name}: host agent older than v{commands.LEASE_PROTOCOL} (the gate refused "
                "`apply --lease`): install host/ on the host (docs/upgrade.md)"
            ) from None
        return host_agent.apply_outcome(target, answer, run)

    @activity.defn(name="compose_ps")
    @step
    async def compose_ps(self, inp: ComposePsInput) -> ServiceObservation:
        """Step 6: one read-only look at the service (the workflow polls), through the agent's
        `health`, which also renews the apply's lease on the project."""
        target = inp.target
        check_unchanged(self.deps.settings, inp.module, target)
        # The run id is the server's, never the input's: the agent renews this run's lease only.
        run = activity.info().workflow_run_id or ""
        command = commands.agent_health(run, target.compose_path, target.compose_service)
        try:
            answer = await host_agent.ask(
                self.deps.transport, target, command, run, "health", timeout_s=READ_TIMEOUT_S
            )
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
        out = await self.deps.transport.run(target.host, command, timeout_s=READ_TIMEOUT_S)
        if out.returncode == commands.GATE_REFUSED:
            # A gate from before --all: ask as it allows, which shows no stopped container,
            # rather than never seeing one.
            activity.logger.warning("%s: the host's gate refused ps --all; install the current gate", target.host.name)
            command = commands.compose_ps_running(target.compose_path, target.compose_service)
            out = await self.deps.transport.run(target.host, command, timeout_s=READ_TIMEOUT_S)
        if out.returncode != 0:
            # Not fatal by itself: the service may still come up before the deadline.
            why = failure(out.returncode, out.timed_out, out.stdout, out.stderr)
            return ServiceObservation(state="", health="", error=f"compose ps {why}")
        try:
            return observe(out.stdout, target.compose_service)
        except UnreadablePs as e:
            return ServiceObservation(state="", health="", error=str(e))

    @activity.defn(name="compose_rollback")
    @step
    async def compose_rollback(self, inp: RollbackImagesInput) -> ComposeUpResult:
        """Put the service back on the image it ran before compose up. For an apply, the agent's
        `rollback` pins the image it recorded before this run's up, under the run's lease; for
        an operator's rollback (or an older agent), `up -d --no-deps` with a one-service image
        pin on standard input. The compose file is not touched; siblings stay as they are."""
        key = (inp.target.host.name, inp.target.project)
        return await self.compose_runs.run(key, lambda: self._compose_rollback(inp))

    async def _compose_rollback(self, inp: RollbackImagesInput) -> ComposeUpResult:
        target = inp.target
        settings = self.deps.settings
        command = commands.compose_rollback(target.compose_path, target.compose_service, inp.image_id)
        if not (target.execute and settings.execute_remote):
            raise PolicyViolation("an image rollback needs PLATFORMCTL_PHASE=05, like compose up")
        check_unchanged(settings, inp.module, target)
        if inp.approval is None:  # an apply's own rollback: the agent pins what it recorded
            try:
                return await self._agent_rollback(inp)
            except host_agent.OlderAgent:
                activity.logger.warning("%s: the host agent predates `rollback`: pinning by ID", target.host.name)
        if inp.approval is not None and activity.info().attempt == 1:
            # An operator's request, signed when a key is set: still unexpired, and signed
            # with the key as it is now, when the host changes (the lock wait may be long).
            # A later attempt finishes what the first decided: that one may have pinned already.
            check_signature(settings.approval_key(), inp.module, inp.approval, datetime.now(UTC))
        activity.logger.warning("rolling back on %s: %s (image %s)", target.host.name, command.render(), inp.image_id)
        out = await self.deps.transport.run(target.host, command, timeout_s=inp.timeout_seconds)
        return ran(command, out)

    async def _agent_rollback(self, inp: RollbackImagesInput) -> ComposeUpResult:
        target = inp.target
        run = activity.info().workflow_run_id or ""
        command = commands.agent_rollback(run, inp.timeout_seconds, target.compose_path, target.compose_service)
        activity.logger.warning("rolling back on %s: %s", target.host.name, command.render())
        answer = await host_agent.ask(
            self.deps.transport, target, command, run, "rollback",
            timeout_s=inp.timeout_seconds + AGENT_MARGIN_S, busy_for_s=AGENT_MARGIN_S,
        )  # fmt: skip
        if not host_agent.rollback_outcome(target, answer, run):
            return ComposeUpResult(executed=False, command=command.render())  # nothing to put back
        if answer.image_id != inp.image_id:
            activity.logger.warning("%s: the agent put back %s, the worker's snapshot saw %s", target.host.name,
                                    answer.image_id, inp.image_id)  # fmt: skip
        return host_agent.ran(command, answer)

    @activity.defn(name="release_lease")
    @step
    async def release_lease(self, inp: ComposePsInput) -> int:
        """After step 7: free the run's lease on the project, so the next apply need not wait
        for it to expire. How many the host freed (0: none was held, or an older agent)."""
        target = inp.target
        if not (target.execute and self.deps.settings.execute_remote):
            return 0  # nothing was changed on the host, so nothing was leased
        run = activity.info().workflow_run_id or ""
        command = commands.agent_release(run)
        try:
            answer = await host_agent.ask(
                self.deps.transport, target, command, run, "release", timeout_s=READ_TIMEOUT_S
            )
        except host_agent.OlderAgent:
            return 0
        return answer.released or 0
