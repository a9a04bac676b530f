"""ReapplyWorkflow: apply each module's last approved state again, to correct drift.

Meant for a Temporal Schedule (overlap policy: skip; pause on failure). One
child ApplyWorkflow per module, with the plan and approval the module was last
applied with: no new approval, and nothing that was not approved (see
platformctl/policy/reapply.py for which modules are skipped, and why).

At most `max_parallel` compose projects at once, one apply at a time changing
each. A project's next apply starts while the one before it runs: it makes
its checks and waits on the project lock, which is handed straight on to it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, ChildWorkflowError
from temporalio.workflow import ChildWorkflowHandle

with workflow.unsafe.imports_passed_through():
    from activities.lookups import Lookups
    from platformctl.models import (
        PlanReapplyInput,
        ReapplyCandidate,
        ReapplyEntry,
        ReapplyInput,
        ReapplyResult,
    )
    from platformctl.policy.reapply import drifted, skip_reason

APPLY_WORKFLOW = "ApplyWorkflow"
# Deprecated patches: runs of the previous version hold their markers (workflows/apply.py).
PIPELINE_PATCH = "reapply-pipeline"
PLAN_BOUND_PATCH = "reapply-plan-bound"
# Children named with this run's whole id: run ids are time-ordered (UUIDv7), so their first
# 8 characters were shared by every re-apply started in the same ~65 s, and collided.
CHILD_ID_PATCH = "reapply-child-full-run-id"

Child = ChildWorkflowHandle[Any, dict[str, Any]]  # a started ApplyWorkflow


# A bad input (a hand-made schedule) fails this run instead of wedging it:
# the schedule pauses and the UI shows why.
@workflow.defn(name="ReapplyWorkflow", failure_exception_types=[Exception])
class ReapplyWorkflow:
    @workflow.run
    async def run(self, request: ReapplyInput | None = None) -> ReapplyResult:
        req = request or ReapplyInput()
        workflow.deprecate_patch(PIPELINE_PATCH)
        workflow.deprecate_patch(PLAN_BOUND_PATCH)
        candidates = await workflow.execute_activity_method(
            Lookups.plan_reapply,
            PlanReapplyInput(modules=req.modules),
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=3),
            summary="read recorded state and platform files",
        )
        slots = asyncio.Semaphore(req.max_parallel)
        entries: dict[str, ReapplyEntry] = {}
        lanes: dict[str, list[ReapplyCandidate]] = defaultdict(list)
        for c in candidates:
            reason = c.problem or skip_reason(c)
            if reason is not None:
                entries[c.module] = ReapplyEntry(
                    module=c.module, outcome="failed" if c.problem else "skipped", reason=reason
                )
            else:
                lanes[c.lane or c.module].append(c)

        # Each started apply, until it ends, in start order: a set's order differs from
        # one process to the next, and a cancel must go out in the same order on replay.
        running: dict[asyncio.Future[None], None] = {}
        stopping = False  # cancelled: start no more

        async def outcome(c: ReapplyCandidate, child: Child) -> None:
            entries[c.module] = await self._outcome(c, child)

        async def run_lane(lane: list[ReapplyCandidate]) -> None:
            async with slots:  # a slot is a project: only one of its applies holds its lock
                ahead: asyncio.Future[None] | None = None
                for c in lane:
                    if stopping:
                        break
                    child = await self._start(c)  # queues on the lock behind the one ahead
                    task = asyncio.ensure_future(outcome(c, child))
                    running[task] = None
                    task.add_done_callback(lambda done: running.pop(done, None))
                    if stopping:
                        task.cancel()
                    if ahead is not None:
                        await ahead
                    ahead = task
                if ahead is not None:
                    await ahead

        lanes_done = asyncio.gather(*(run_lane(lane) for lane in lanes.values()))
        try:
            await asyncio.shield(lanes_done)
        except asyncio.CancelledError:
            # Every apply in flight is cancelled, the one waiting on its project's lock
            # too (awaited by nobody, it would take the lock and run compose up), and
            # no other starts. Each ends as its cancel leaves it; then this run.
            stopping = True
            for task in list(running):
                task.cancel()
            await lanes_done
            raise
        result = ReapplyResult(results=[entries[c.module] for c in candidates])
        failed = [e.module for e in result.results if e.outcome == "failed"]
        if failed:
            raise ApplicationError(
                f"re-apply failed for {', '.join(failed)}", result, type="ReapplyFailed", non_retryable=True
            )
        return result

    async def _start(self, c: ReapplyCandidate) -> Child:
        assert c.state is not None and c.state.last_applied is not None
        last = c.state.last_applied
        # The plan as approved, so that it has the digest its approval names.
        plan = last.plan_raw if last.plan_raw is not None else last.plan.model_dump(mode="json")
        return await workflow.start_child_workflow(
            APPLY_WORKFLOW,
            {"plan": plan, "approval": last.approval.model_dump(mode="json")},
            id=f"reapply-{c.module}-{last.sha[:12]}-{self._run_tag()}",
            # A re-apply that is terminated or times out asks its applies to stop, so one
            # in compose up rolls back and records; the default would terminate it mid-run.
            parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
            static_summary=f"re-apply {c.module}@{c.host} {last.sha[:7]} PR #{last.pr}",
            result_type=dict,
        )

    @staticmethod
    def _run_tag() -> str:
        run_id = workflow.info().run_id
        return run_id if workflow.patched(CHILD_ID_PATCH) else run_id[:8]

    async def _outcome(self, c: ReapplyCandidate, child: Child) -> ReapplyEntry:
        try:
            result = await child
        except ChildWorkflowError as e:
            cause = e.cause
            detail = cause.details[0] if isinstance(cause, ApplicationError) and cause.details else None
            applied = detail if isinstance(detail, dict) else None
            error = str(applied.get("error") if applied else getattr(cause, "message", e))
            if applied and applied.get("status") == "blocked" and " holds commit " in error:
                return ReapplyEntry(module=c.module, outcome="skipped", reason=error, apply=applied)
            return ReapplyEntry(module=c.module, outcome="failed", reason=error, apply=applied)
        return ReapplyEntry(module=c.module, outcome="applied", drift=drifted(result), apply=result)
