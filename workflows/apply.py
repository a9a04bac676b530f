"""ApplyWorkflow: the seven steps of the SPEC, in order. Orchestration only.

Every step is an activity; any step that says no raises `Stop`, which ends
the apply with a contract status. Nothing here does I/O or reads a clock
outside `workflow.*`.

Its input and messages arrive as raw payloads (workflows/dynamic.py): it
decodes them itself, within the contract's bounds, and ends a bad input
`blocked` instead of failing its workflow task forever. Each step's rules
live in the module named for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.checks import Checks
    from activities.remote_steps import RemoteSteps
    from platformctl import commands
    from platformctl.client import PLATFORM_HOST, PLATFORM_MODULE, PLATFORM_STATUS
    from platformctl.models import (
        ApplyInput,
        ApplyResult,
        CheckHostInput,
        ComposeUpInput,
        GuardComposePathInput,
        HealthConfig,
        HealthRecord,
        ImageSnapshot,
        PersistStateInput,
        Target,
        ValidatedPlan,
        ValidatePlanInput,
        VerifyCheckoutInput,
    )
    from platformctl.outcomes import OUTCOMES, SUCCESS, Status
    from platformctl.policy.plan import compose_action, plan_digest
    from platformctl.redact import redact_and_cap
    from workflows import compose_up, health_check, images, records
    from workflows.approval import ApprovalGate
    from workflows.lock_client import ProjectLockClient
    from workflows.messages import apply_input, module_named
    from workflows.steps import READ_STEP, Steps, Stop, both, uncancellable


class ApplyWorkflow:
    """One ApplyWorkflow run; workflows/dynamic.py hands it the run and its messages."""

    def __init__(self) -> None:
        self._steps = Steps()
        self._status: str = "running"  # the apply's Status when done
        self._gate = ApprovalGate(self._steps)
        self._input: ApplyInput | None = None
        # The plan exactly as received and its plan_digest, which an approval must name.
        self._plan_raw: dict[str, Any] | None = None
        self._digest = ""
        self._plan: ValidatedPlan | None = None
        self._out = records.Outcome()
        self._lock = ProjectLockClient(self._steps, self._gate.raise_if_rejected, self._gate.rejected)

    async def run(self, args: Sequence[RawValue]) -> ApplyResult:
        self._steps.coalesce = True
        self._steps.upsert(PLATFORM_STATUS.value_set("running"))
        try:
            result = await self._apply(args)
        except Stop as stop:
            result = await self._finish(stop.status, stop.message)
        except asyncio.CancelledError:
            # Canceled in Temporal's terms; recorded like every other outcome.
            await self._finish("cancelled", self._out.error or "cancel requested before compose up started")
            raise
        if result.status in SUCCESS:
            return result
        raise ApplicationError(
            result.error or result.status, result, type=OUTCOMES[result.status].error_type, non_retryable=True
        )

    async def _apply(self, args: Sequence[RawValue]) -> ApplyResult:
        """The SPEC's seven steps, in order; any step that says no raises Stop."""
        inp = self._parse(args)
        plan = await self._validate_plan(inp)  # 1
        if not plan.has_changes:
            return await self._finish("no_changes")
        await self._check_approval(inp, plan)  # 2
        target = await self._resolve_target(plan)  # 3 and 4
        if not target.execute:
            return await self._finish("dry_run")
        self._gate.raise_if_rejected()
        async with self._lock.hold(target, plan.module):
            await self._read_host(target, inp.plan.source_sha, plan.module)
            self._gate.raise_if_rejected()  # the last moment a reject (or cancel) stops it cleanly
            try:
                await self._compose_up(target, plan)  # 5
                await self._health_smoke(target, plan)  # 6
                await self._persist()  # 7
            except Stop as stop:
                await self._roll_back(stop.status, stop.message, target, restore=stop.restore)
                raise
            except asyncio.CancelledError:
                self._out.error = f"cancelled during {self._steps.phase}, after compose up started"
                await self._roll_back("cancelled", self._out.error, target)
                raise
            finally:
                await uncancellable(compose_up.release_lease(self._steps, target, plan.module))
        # The release is live and healthy whether or not its record could be written: the
        # lock is free for the next apply while the record is tried again.
        await uncancellable(self._record_again("applied"))
        return self._done("applied")

    # ---- steps ------------------------------------------------------------

    async def _validate_plan(self, inp: ApplyInput) -> ValidatedPlan:
        plan = await self._steps.run(
            Checks.validate_plan, ValidatePlanInput(plan=inp.plan, plan_digest=self._digest), local=True
        )
        self._known_target(plan)
        self._headline(plan)
        return plan

    async def _check_approval(self, inp: ApplyInput, plan: ValidatedPlan) -> None:
        given = inp.approval
        if given is None:
            given = await self._gate.wait(self._sha7(), inp.approval_timeout_seconds, plan.module, plan.host)
        await self._gate.check(inp, given, self._digest)
        self._headline(plan)

    async def _resolve_target(self, plan: ValidatedPlan) -> Target:
        """Resolve and guard the compose path (3), then check the host allowlist and read
        the phase gate (4)."""
        guarded = await self._steps.run(
            Checks.guard_compose_path,
            GuardComposePathInput(host=plan.host, compose_file=plan.compose_file),
            local=True,
        )
        target = await self._steps.run(
            Checks.check_host_allowlist,
            CheckHostInput(host=plan.host, guarded=guarded, compose_service=plan.compose_service),
            local=True,
        )
        self._out.command = target.command
        return target

    async def _read_host(self, target: Target, sha: str, module: str) -> None:
        """The checkout and the images, side by side: both only read the host; what a
        rollback goes back to is seen under the lock right before anything changes."""
        _, self._out.snapshot = await both(self._verify_checkout(target, sha), self._snapshot_images(target, module))

    async def _health_smoke(self, target: Target, plan: ValidatedPlan) -> None:
        self._steps.enter("health_check", health_check.details(plan.health, self._out.health))
        # What compose up left running is listed while the health smoke watches it.
        # Only a read: when the apply fails meanwhile it is left to end on its own
        # (never cancelled: a cancel racing its own completion broke the SDK's and
        # the test server's bookkeeping of it).
        listing = asyncio.ensure_future(self._images_now(target))
        self._out.health = await health_check.watch(
            self._steps, target, plan.module, plan.health, self._on_apply_health
        )
        # From here a cancel is too late: the service is live and healthy.
        self._out.images = await uncancellable(listing)

    async def _persist(self) -> None:
        self._steps.enter("persisting", "Recording the applied state.")
        await uncancellable(self._record("applied"))

    def _parse(self, args: Sequence[RawValue]) -> ApplyInput:
        try:
            inp, self._plan_raw = apply_input(args)
        except Stop:
            self._out.module = module_named(args)
            raise
        self._digest = plan_digest(self._plan_raw)  # decode_json refused what has no UTF-8 form
        self._input = inp
        self._out.module = inp.plan.module[:64]
        self._steps.upsert(PLATFORM_MODULE.value_set(self._out.module))
        return inp

    def _known_target(self, plan: ValidatedPlan) -> None:
        self._plan = plan
        self._steps.upsert(PLATFORM_HOST.value_set(plan.host))

    async def _verify_checkout(self, target: Target, sha: str) -> None:
        if not target.host.verify_checkout:
            self._out.checkout_verified = False  # the host opted out: the result and audit line say so
            return
        await self._steps.run(
            RemoteSteps.verify_checkout,
            VerifyCheckoutInput(
                target=target, approved_sha=sha, module=self._plan.module if self._plan else "",
                reapply=workflow.info().parent is not None,
            ),
            remote=True,
            **READ_STEP,
        )
        self._out.checkout_verified = True

    async def _compose_up(self, target: Target, plan: ValidatedPlan) -> None:
        assert self._input is not None and self._gate.approval is not None
        timeout_s = plan.up_timeout_seconds
        action = compose_action(self._input.plan)
        # Shown only; an action with no compose command (a remove of an older run) shows the plain up.
        shown = (commands.compose_action(target.compose_path, target.compose_service, action).render()
                 if action in commands.ACTION_ARGS else target.command)
        self._steps.enter("applying", f"Running `{shown}` on {target.host.name} (killed after {timeout_s} s).")
        up = await compose_up.run(
            self._steps,
            ComposeUpInput(
                target=target,
                timeout_seconds=timeout_s,
                module=plan.module,
                source_sha=self._input.plan.source_sha,
                approval=self._gate.approval,
                plan_digest=self._digest,
                poll_seconds=plan.health.poll_seconds,
                action=action,
                reapply=workflow.info().parent is not None,
            ),
        )
        self._out.command, self._out.remote = up.command, up.remote
        compose_up.judge(up, timeout_s)

    async def _snapshot_images(self, target: Target, module: str) -> ImageSnapshot:
        self._steps.enter(
            "applying", f"Listing the images `{target.compose_service}` runs on {target.host.name} before compose up."
        )
        return await images.listing(self._steps, target, module)

    async def _images_now(self, target: Target) -> ImageSnapshot | None:
        """The images a healthy apply left running: the module's last good images.
        Only a record: failing to list them does not fail a healthy apply."""
        assert self._plan is not None
        try:
            return await images.listing(self._steps, target, self._plan.module)
        except Stop as e:
            workflow.logger.warning("images after the apply not recorded: %s", e.message)
            return None

    def _on_apply_health(self, record: HealthRecord, cfg: HealthConfig) -> None:
        self._out.health = record
        self._steps.details(health_check.details(cfg, self._out.health))

    # ---- endings ----------------------------------------------------------

    async def _roll_back(self, status: Status, message: str, target: Target, *, restore: bool = True) -> None:
        self._steps.enter("rolling_back", f"Rolling back after `{status}`: {message}")
        self._status = status
        source_sha = self._input.plan.source_sha if self._input else ""
        await records.roll_back(
            self._steps, self._out, self._plan, source_sha, self._gate.approval, status, message, target, restore
        )

    async def _finish(self, status: Status, message: str | None = None) -> ApplyResult:
        """End a non-applied outcome: one audit line, then the result."""
        self._out.error = message
        await uncancellable(self._record(status))
        await uncancellable(self._record_again(status))
        return self._done(status)

    async def _record(self, status: Status) -> None:
        await records.write(self._steps, self._out, self._persist_input(status))

    async def _record_again(self, status: Status) -> None:
        await records.retry(self._steps, self._out, status, lambda: self._record(status))

    # ---- plumbing ---------------------------------------------------------

    def _approved_by(self) -> str | None:
        """Who approved, as shown: signed as given, redacted wherever it is seen or kept."""
        by = self._gate.approval.approved_by if self._gate.approval else None
        return redact_and_cap(by) if by else None

    def _persist_input(self, status: Status) -> PersistStateInput:
        return records.persist_input(
            self._out, status, self._plan, self._input, self._plan_raw, self._gate.approval, self._gate.rejection
        )

    def _result(self, status: Status, error: str | None = None) -> ApplyResult:
        return self._out.result(status, self._plan, error)

    def _done(self, status: Status) -> ApplyResult:
        self._steps.phase = "done"
        self._status = status
        self._steps.upsert(PLATFORM_STATUS.value_set(status))
        self._steps.flush()  # now: nothing may follow the workflow's completion
        error = f": {self._out.error}" if self._out.error else ""
        image = self._out.rollback.image if self._out.rollback else None
        rolled = f"\n\nImage rollback: **{image.outcome}** {image.image_id or ''} {image.error or ''}" if image else ""
        error_type = OUTCOMES[status].error_type
        kind = f"{error_type}, " if error_type else ""
        self._steps.details(f"**{status}** ({kind}exit code {OUTCOMES[status].exit_code}){error}{rolled}")
        return self._result(status, self._out.error)

    def _headline(self, plan: ValidatedPlan) -> None:
        approval = self._gate.approval
        who = "awaiting approval"
        if approval is not None:
            who = f"PR #{approval.approved_pr}, approved by {self._approved_by() or '?'}"
        self._steps.headline = f"**{plan.module}@{plan.host}** `{self._sha7()}` {who}"

    def _sha7(self) -> str:
        return self._input.plan.source_sha[:7] if self._input else "?"

    # ---- messages ---------------------------------------------------------
    # Signals and updates arrive raw: a payload of any shape, or any number of
    # them, is handled here and never fails the workflow task.

    def on_signal(self, name: str, args: Sequence[RawValue]) -> None:
        if name == "approve":
            self._gate.on_approve(args)
        elif name == "reject":
            self._gate.on_reject(args)
        elif not self._lock.on_signal(name, args):
            workflow.logger.warning("ignored unknown signal %r", name[:100])

    async def on_update(self, name: str, args: Sequence[RawValue]) -> dict[str, Any]:
        """`approve` as an Update: answers once the approval has been checked."""
        return await self._gate.on_update(args, lambda: (self._input, self._digest) if self._input else None)

    def validate_update(self, name: str, args: Sequence[RawValue]) -> None:
        """Refuse at once, with the reason, what cannot approve this apply."""
        if name != "approve":
            raise ApplicationError(f"unknown update {name[:100]!r}: this workflow takes 'approve'", non_retryable=True)
        self._gate.validate_update(args, self._input, self._digest)

    def status(self) -> dict[str, Any]:
        plan = self._plan
        return {
            "phase": self._steps.phase,
            "status": self._status,
            "module": plan.module if plan else self._out.module,
            "host": plan.host if plan else None,
            "compose_service": plan.compose_service if plan else None,
            "command": self._out.command,
            "health": self._out.health.model_dump() if self._out.health else None,
            "error": self._out.error,
            "lock": self._lock.lock_id,
            "approved_by": self._approved_by(),
            "checkout_verified": self._out.checkout_verified,
            "record_pending": self._out.pending,
        }
