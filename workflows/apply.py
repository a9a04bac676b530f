"""ApplyWorkflow: the seven steps of the SPEC, in order. Orchestration only.

Every step is an activity; any step that says no raises `_Stop`, which ends
the apply with a contract status. Nothing here does I/O or reads a clock
outside `workflow.*`.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, AsyncIterator

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.check_approval import CheckApproval
    from activities.check_host_allowlist import CheckHostAllowlist
    from activities.compose_up import ComposeUp
    from activities.guard_compose_path import GuardComposePath
    from activities.health_smoke import HealthSmoke
    from activities.persist_state import PersistState
    from activities.rollback import Rollback
    from activities.validate_plan import ValidatePlan
    from activities.verify_checkout import VerifyCheckout
    from platformctl.client import SEARCH_ATTRIBUTES
    from platformctl.models import (
        ApplyInput,
        ApplyResult,
        Approval,
        CheckApprovalInput,
        CheckHostInput,
        ComposePsInput,
        ComposeUpInput,
        GuardComposePathInput,
        HealthConfig,
        HealthRecord,
        LockRequest,
        PersistStateInput,
        Rejection,
        RemoteRecord,
        RollbackInput,
        RollbackRecord,
        Target,
        ValidatedPlan,
        ValidatePlanInput,
        VerifyCheckoutInput,
        brief_errors,
    )
    from platformctl.outcomes import OUTCOMES, STATUS_BY_ERROR_TYPE
    from platformctl.policy.health import verdict
    from workflows.module_lock import ModuleLockWorkflow, lock_workflow_id

PLATFORM_MODULE, PLATFORM_HOST, PLATFORM_STATUS = SEARCH_ATTRIBUTES

SUCCESS = frozenset({"applied", "no_changes", "dry_run"})
LOCK_WAIT = timedelta(minutes=15)
LOCK_POLL = timedelta(seconds=10)

# Local checks: a few quick tries, then the apply ends as tool_error.
LOCAL_STEP = dict(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3),
)
# Remote steps: retried only while the host may yet answer (connection refused
# or timed out, worker lost); a wrong key or a failed command is final.
REMOTE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=4,
)
# Read-only remote steps (ps, git rev-parse).
READ_STEP = dict(start_to_close_timeout=timedelta(seconds=60), retry_policy=REMOTE_RETRY)


class _Stop(Exception):
    """Ends the apply with a contract status."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@workflow.defn(name="ApplyWorkflow")
class ApplyWorkflow:
    def __init__(self) -> None:
        self._phase = "validating"
        self._status = "running"
        self._signalled_approval: Any = None  # raw: parsed like a given one, once it is used
        self._approval: Approval | None = None
        self._rejection: Rejection | None = None
        self._input: ApplyInput | None = None
        self._plan: ValidatedPlan | None = None
        self._module: str | None = None
        self._command: str | None = None
        self._remote: RemoteRecord | None = None
        self._health: HealthRecord | None = None
        self._state_artifact: str | None = None
        self._rollback: RollbackRecord | None = None
        self._error: str | None = None

    @workflow.run
    async def run(self, request: Any = None) -> ApplyResult:
        workflow.upsert_search_attributes([PLATFORM_STATUS.value_set("running")])
        try:
            result = await self._apply(request)
        except _Stop as stop:
            result = await self._finish(stop.status, stop.message)
        if result.status in SUCCESS:
            return result
        raise ApplicationError(
            result.error or result.status, result, type=OUTCOMES[result.status].error_type, non_retryable=True
        )

    async def _apply(self, request: Any) -> ApplyResult:
        inp = self._parse(request)
        # 1. Validate plan
        plan = await self._step(ValidatePlan.validate_plan, ValidatePlanInput(plan=inp.plan))
        self._known_target(plan)
        if not plan.has_changes:
            return await self._finish("no_changes")
        # 2. Check approval
        given = inp.approval if inp.approval is not None else await self._await_approval(inp.approval_timeout_seconds)
        self._approval = self._parse_approval(given)
        await self._step(CheckApproval.check_approval, CheckApprovalInput(plan=inp.plan, approval=self._approval))
        # 3. Resolve and guard the compose path
        guarded = await self._step(
            GuardComposePath.guard_compose_path, GuardComposePathInput(host=plan.host, compose_file=plan.compose_file)
        )
        # 4. Check the host allowlist (and read the phase gate)
        target = await self._step(
            CheckHostAllowlist.check_host_allowlist,
            CheckHostInput(host=plan.host, guarded=guarded, compose_service=plan.compose_service),
        )
        self._command = target.command
        if not target.execute:
            return await self._finish("dry_run")
        self._raise_if_rejected()
        async with self._module_lock(plan.module):
            if target.host.verify_checkout:
                await self._step(
                    VerifyCheckout.verify_checkout,
                    VerifyCheckoutInput(target=target, approved_sha=inp.plan.source_sha),
                    remote=True,
                    **READ_STEP,
                )
            try:
                # 5. Compose up with a timeout
                self._phase = "applying"
                await self._compose_up(target, plan.up_timeout_seconds)
                # 6. Post-apply health smoke
                self._phase = "health_check"
                self._health = await self._health_smoke(target, plan.health)
                # 7. Persist state
                self._phase = "persisting"
                persisted = await self._step(PersistState.persist_state, self._persist_input("applied"))
                self._state_artifact = persisted.state_artifact
            except _Stop as stop:
                self._phase = "rolling_back"
                await self._run_rollback(stop)
                raise
        return self._done("applied")

    # ---- steps ------------------------------------------------------------

    def _parse(self, request: Any) -> ApplyInput:
        try:
            inp = ApplyInput.model_validate(request)
        except ValidationError as e:
            if isinstance(request, dict) and isinstance(request.get("plan"), dict):
                module = request["plan"].get("module")
                self._module = module[:64] if isinstance(module, str) else None
            raise _Stop("blocked", f"invalid apply input: {brief_errors(e)}") from None
        self._input = inp
        self._module = inp.plan.module[:64]
        workflow.upsert_search_attributes([PLATFORM_MODULE.value_set(self._module)])
        return inp

    def _known_target(self, plan: ValidatedPlan) -> None:
        self._plan = plan
        workflow.upsert_search_attributes([PLATFORM_HOST.value_set(plan.host)])

    async def _await_approval(self, timeout_s: int) -> Any:
        self._phase = "awaiting_approval"
        try:
            await workflow.wait_condition(
                lambda: self._signalled_approval is not None or self._rejection is not None,
                timeout=timedelta(seconds=timeout_s),
            )
        except asyncio.TimeoutError:
            raise _Stop("approval_expired", f"no approval arrived within {timeout_s} seconds") from None
        self._raise_if_rejected()
        self._phase = "validating"
        return self._signalled_approval

    @staticmethod
    def _parse_approval(given: Any) -> Approval:
        # Given or signalled, an approval that does not parse approves nothing.
        try:
            return Approval.model_validate(given)
        except ValidationError as e:
            raise _Stop("approval_mismatch", f"not a valid approval: {brief_errors(e)}") from None

    def _raise_if_rejected(self) -> None:
        if self._rejection is not None:
            raise _Stop("rejected", f"rejected: {self._rejection.reason or 'no reason given'}")

    async def _compose_up(self, target: Target, timeout_s: int) -> None:
        up = await self._step(
            ComposeUp.compose_up,
            ComposeUpInput(target=target, timeout_seconds=timeout_s),
            remote=True,
            # The transport kills the command at timeout_s; this only catches a lost worker.
            start_to_close_timeout=timedelta(seconds=timeout_s + 60),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=REMOTE_RETRY,
        )
        self._command = up.command
        self._remote = up.remote
        if up.timed_out:
            raise _Stop("remote_failed", f"compose up still running after {timeout_s} seconds: killed")
        if up.remote is None or up.remote.returncode != 0:
            code = up.remote.returncode if up.remote else None
            raise _Stop("remote_failed", f"compose up exited with code {code}")

    async def _health_smoke(self, target: Target, cfg: HealthConfig) -> HealthRecord:
        """Poll with durable timers until healthy for a stable window, or fail."""
        started = workflow.now()
        healthy_since = None
        while True:
            seen = await self._step(HealthSmoke.compose_ps, ComposePsInput(target=target), remote=True, **READ_STEP)
            now = workflow.now()
            state = verdict(seen)
            healthy_since = (healthy_since or now) if state == "healthy" else None
            stable_s = (now - healthy_since).total_seconds() if healthy_since else 0.0
            self._health = HealthRecord(state=seen.state or "absent", health=seen.health or "none", observed_s=round(stable_s, 1))
            if state == "healthy" and stable_s >= cfg.stable_seconds:
                return self._health
            waited = (now - started).total_seconds()
            if state == "failed" or waited >= cfg.timeout_seconds:
                why = f"; last poll: {seen.error}" if seen.error else ""
                raise _Stop(
                    "unhealthy",
                    f"service {target.compose_service!r} did not stay healthy for {cfg.stable_seconds}s "
                    f"within {cfg.timeout_seconds}s: state={self._health.state}, health={self._health.health}{why}",
                )
            await workflow.sleep(timedelta(seconds=min(cfg.poll_seconds, max(1.0, cfg.timeout_seconds - waited))))

    @asynccontextmanager
    async def _module_lock(self, module: str) -> AsyncIterator[None]:
        """Hold the module's lock; wait up to LOCK_WAIT for another apply to finish."""
        lock_id = lock_workflow_id(module)
        deadline = workflow.now() + LOCK_WAIT
        while True:
            try:
                handle = await workflow.start_child_workflow(
                    ModuleLockWorkflow.run,
                    LockRequest(module=module, holder_workflow_id=workflow.info().workflow_id),
                    id=lock_id,
                    parent_close_policy=workflow.ParentClosePolicy.TERMINATE,
                )
                break
            except WorkflowAlreadyStartedError:
                if workflow.now() >= deadline:
                    raise _Stop(
                        "blocked",
                        f"another apply of module {module!r} holds its lock ({lock_id}) "
                        f"and did not finish within {int(LOCK_WAIT.total_seconds())} seconds",
                    ) from None
                self._phase = "applying"
                await workflow.sleep(LOCK_POLL)
        try:
            yield
        finally:
            await handle.signal(ModuleLockWorkflow.release)
            await handle  # released means closed: the next apply can start it at once

    async def _run_rollback(self, stop: _Stop) -> None:
        self._status = stop.status
        try:
            self._rollback = await self._step(
                Rollback.rollback,
                RollbackInput(
                    result=self._result(stop.status, stop.message),
                    source_sha=self._input.plan.source_sha if self._input else "",
                    workflow_id=workflow.info().workflow_id,
                ),
                **LOCAL_STEP,
            )
            self._state_artifact = self._rollback.state_artifact
        except _Stop as failed:
            workflow.logger.error("rollback could not record the failure: %s", failed.message)
            self._rollback = RollbackRecord(
                reason=f"{stop.message} (rollback record failed: {failed.message})",
                last_good_sha=None,
                state_artifact=None,
            )

    async def _finish(self, status: str, message: str | None = None) -> ApplyResult:
        """End a non-applied outcome: one audit line, then the result."""
        self._error = message
        try:
            await self._step(PersistState.persist_state, self._persist_input(status))
        except _Stop as failed:
            # The outcome stands; losing its audit line must not hide it.
            workflow.logger.error("audit line for %s not written: %s", status, failed.message)
        return self._done(status)

    # ---- plumbing ---------------------------------------------------------

    async def _step(self, method: Any, arg: Any, *, remote: bool = False, **options: Any) -> Any:
        """Run one activity; turn its failure into the contract status."""
        try:
            return await workflow.execute_activity_method(method, arg, **(options or LOCAL_STEP))
        except ActivityError as e:
            cause = e.cause
            if isinstance(cause, ApplicationError) and cause.type in STATUS_BY_ERROR_TYPE:
                raise _Stop(STATUS_BY_ERROR_TYPE[cause.type], cause.message) from None
            status = "remote_failed" if remote else "tool_error"
            detail = cause.message if cause is not None else e.message
            raise _Stop(status, f"{method.__name__} failed: {detail}") from None

    def _persist_input(self, status: str) -> PersistStateInput:
        info = workflow.info()
        return PersistStateInput(
            result=self._result(status, self._error),
            source_sha=self._input.plan.source_sha if self._input else None,
            approved_pr=self._approval.approved_pr if self._approval else None,
            plan_digest=self._plan.plan_digest if self._plan else None,
            workflow_id=info.workflow_id,
            run_id=info.run_id,
        )

    def _result(self, status: str, error: str | None = None) -> ApplyResult:
        plan = self._plan
        return ApplyResult(
            status=status,
            exitCode=OUTCOMES[status].exit_code,
            module=plan.module if plan else self._module,
            host=plan.host if plan else None,
            compose_service=plan.compose_service if plan else None,
            command=self._command,
            remote=self._remote,
            health=self._health,
            state_artifact=self._state_artifact,
            rollback=self._rollback,
            error=error,
        )

    def _done(self, status: str) -> ApplyResult:
        self._phase = "done"
        self._status = status
        workflow.upsert_search_attributes([PLATFORM_STATUS.value_set(status)])
        return self._result(status, self._error)

    # ---- messages ---------------------------------------------------------

    @workflow.signal
    def approve(self, approval: Any) -> None:
        if self._signalled_approval is None:  # the first one decides
            self._signalled_approval = approval if approval is not None else {}

    @workflow.signal
    def reject(self, rejection: Any = None) -> None:
        try:
            self._rejection = Rejection.model_validate(rejection or {})
        except ValidationError:
            self._rejection = Rejection(reason="(reject signal payload was not an object)")

    @workflow.query
    def status(self) -> dict[str, Any]:
        plan = self._plan
        return {
            "phase": self._phase,
            "status": self._status,
            "module": plan.module if plan else self._module,
            "host": plan.host if plan else None,
            "compose_service": plan.compose_service if plan else None,
            "command": self._command,
            "health": self._health.model_dump() if self._health else None,
            "error": self._error,
        }
