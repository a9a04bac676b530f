"""The project lock's client: how a run takes, waits for and hands on the lock
workflow of its compose project (workflows/project_lock.py), for queueing and
visibility (the host agent's lease is what keeps two runs of a project apart)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from activities.lookups import Lookups
    from platformctl.client import PLATFORM_KIND
    from platformctl.models import LockHolderInput, LockRequest, Target
    from workflows.project_lock import (
        ENQUEUE,
        LOCK_FREE,
        RELEASE,
        ProjectLockWorkflow,
        hand_on,
        project_lock_id,
        workflow_ids,
    )
    from workflows.steps import Steps, Stop, uncancellable

# Patches the previous version asked here (workflows/dynamic.py: deprecated patches).
PROJECT_LOCK_PATCH = "project-lock"  # a RollbackWorkflow's lock
LOCK_HOLDER_PATCH = "lock-holder-check"  # a start that found the lock's id taken
LOCK_WAIT = timedelta(minutes=15)
LOCK_POLL = timedelta(seconds=10)
# A wait (the first, and each after our turn came) asks again after each of these, then every
# LOCK_POLL: an enqueue that reaches a lock as it closes is lost with it, and the lock is free
# a moment later. Waiters it had queued before are handed on. One poll: each is a failed start
# and an enqueue, and more of them made contended applies slower (bench: 40 applies, 4 projects).
LOCK_POLLS = (timedelta(seconds=1),)
# One describe of a lock's holder on the server.
LOCK_HOLDER_STEP = workflow.ActivityConfig(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3),
)


class ProjectLockClient:
    """Held by one run: `lock_id` while it waits or holds, `free` the queue the previous
    holder handed on with LOCK_FREE (the run passes its signals to on_signal)."""

    def __init__(self, steps: Steps, raise_if_rejected: Callable[[], None], rejected: Callable[[], bool]) -> None:
        self._steps = steps
        self._raise_if_rejected = raise_if_rejected
        self._rejected = rejected
        self.lock_id: str | None = None
        self.free: list[str] | None = None

    def on_signal(self, name: str, args: Sequence[RawValue]) -> bool:
        """Whether the signal was the lock's hand-over (LOCK_FREE), which this takes."""
        if name != LOCK_FREE:
            return False
        self.free = workflow_ids(args)
        return True

    @asynccontextmanager
    async def hold(self, target: Target, module: str) -> AsyncIterator[None]:
        """Hold the lock of the target's compose project on its host.

        Waits up to LOCK_WAIT; a reject or cancel while waiting ends the apply.
        """
        self._steps.asked_by_rollbacks(PROJECT_LOCK_PATCH)
        self._steps.flush()
        me = workflow.info().workflow_id
        lock_id = project_lock_id(target.host.name, target.project)
        deadline = workflow.now() + LOCK_WAIT
        queue: list[str] = []  # handed to us by the previous holder
        polls = iter(LOCK_POLLS)
        ask_holder = True  # at the first taken start, and again after the holder changed
        while True:
            self._raise_if_rejected()
            try:
                handle = await workflow.start_child_workflow(
                    ProjectLockWorkflow.run,
                    LockRequest(
                        module=module,
                        holder_workflow_id=me,
                        host=target.host.name,
                        project=target.project,
                        queue=queue,
                        holder_hands_on=True,
                    ),
                    id=lock_id,
                    parent_close_policy=workflow.ParentClosePolicy.TERMINATE,
                    static_summary=f"lock {target.host.name}/{target.project}: held by {me}",
                    search_attributes=TypedSearchAttributes([SearchAttributePair(PLATFORM_KIND, "lock")]),
                )
                break
            except WorkflowAlreadyStartedError:
                pass
            if ask_holder:
                workflow.deprecate_patch(LOCK_HOLDER_PATCH)
                ask_holder = False
                await self._refuse_squatter(lock_id)
            if self._steps.phase != "waiting_for_lock":
                self._steps.enter(
                    "waiting_for_lock",
                    f"Waiting until {deadline:%H:%M:%S} UTC for `{lock_id}`, held by another apply "
                    f"of compose project {target.project!r} on {target.host.name}.",
                )
            self.lock_id = lock_id
            remaining = deadline - workflow.now()
            if remaining <= timedelta(0):
                raise Stop(
                    "blocked",
                    f"compose project {target.project!r} on {target.host.name} is locked by another apply ({lock_id}) "
                    f"that did not finish within {int(LOCK_WAIT.total_seconds())} seconds",
                )
            self.free = None
            self._steps.flush()  # waiting_for_lock, for whoever looks meanwhile
            try:
                await workflow.get_external_workflow_handle(lock_id).signal(ENQUEUE, [me, *queue])
            except FailureError:
                ask_holder = True
                continue  # the holder finished in between: try again at once
            # The queue is kept: that lock may close with it, so ours gets it too.
            try:
                await workflow.wait_condition(
                    lambda: self.free is not None or self._rejected(),
                    timeout=min(next(polls, LOCK_POLL), remaining),
                )
            except TimeoutError:
                continue
            queue = self.free or []
            ask_holder = True
            polls = iter(LOCK_POLLS)  # a new wait
        self.lock_id = lock_id
        try:
            yield
        finally:
            self._steps.flush()
            await uncancellable(self._release(handle))

    async def _refuse_squatter(self, lock_id: str) -> None:
        """End the apply `blocked` when the lock's id is held by anything but this task
        queue's lock, which would never hand it on. A describe that fails leaves it waiting."""
        try:
            holder = await self._steps.run(
                Lookups.describe_lock_holder, LockHolderInput(lock_id=lock_id), **LOCK_HOLDER_STEP
            )
        except Stop as e:
            workflow.logger.warning("who holds %s is unknown: %s", lock_id, e.message)
            return
        if holder.kind in ("other_type", "other_queue"):
            what = "a workflow of another type" if holder.kind == "other_type" else "a lock on another task queue"
            raise Stop(
                "blocked",
                f"the lock id {lock_id} is held by {what}, which never hands it on: "
                f"ask an operator to end it (temporal workflow terminate --workflow-id {lock_id})",
            )

    @staticmethod
    async def _release(handle: workflow.ChildWorkflowHandle[Any, list[str] | None]) -> None:
        try:
            await handle.signal(RELEASE)
            # Closed means free. A lock asked to (LockRequest.holder_hands_on) returns its
            # queue, and the first waiter still running is told here, after the close,
            # so its start finds the lock free; others handed on already.
            waiting = await handle or []
        except FailureError as e:  # terminated or failed: it holds nothing either way
            workflow.logger.warning("lock %s closed abnormally: %s", handle.id, e)
            return
        await hand_on(waiting)
