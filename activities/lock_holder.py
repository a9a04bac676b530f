"""Step 5's lock, when its id is taken: is it held by this task queue's lock?

Anyone with namespace access can start any workflow under a lock's id (on a
queue no worker polls, say), and every apply of that project would then wait
for a lock that never hands on. One describe tells such a squatter apart from a
real holder; only the verdict goes to history, not the squatter's names.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.base import StepActivities, step
from platformctl.models import PROJECT_LOCK_WORKFLOW, LockHolder, LockHolderInput


class DescribeLockHolder(StepActivities):
    @activity.defn(name="describe_lock_holder")
    @step
    async def describe_lock_holder(self, inp: LockHolderInput) -> LockHolder:
        try:
            described = await self.deps.client.get_workflow_handle(inp.lock_id).describe()
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return LockHolder(kind="none")
            raise
        if described.status != WorkflowExecutionStatus.RUNNING:
            return LockHolder(kind="none")  # it ended in between: the lock is free
        if described.workflow_type != PROJECT_LOCK_WORKFLOW:
            return LockHolder(kind="other_type")
        if described.task_queue != self.deps.settings.task_queue:
            return LockHolder(kind="other_queue")
        return LockHolder(kind="ours")
