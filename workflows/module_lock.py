"""ModuleLockWorkflow: one running instance per module is the module's lock.

Workflow ids are unique among running workflows, so an ApplyWorkflow holds the
lock by starting `platform-lock-<module>` as its child. The child ends when it
is released, or when its parent closes (ParentClosePolicy.TERMINATE), so a
failed or terminated apply can never leave the lock held. This covers every
apply, whatever its own workflow id (schedules add timestamps to theirs).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from platformctl.models import LockRequest


def lock_workflow_id(module: str) -> str:
    return f"platform-lock-{module}"


@workflow.defn(name="ModuleLockWorkflow")
class ModuleLockWorkflow:
    def __init__(self) -> None:
        self._released = False

    @workflow.run
    async def run(self, request: LockRequest) -> None:
        await workflow.wait_condition(lambda: self._released)

    @workflow.signal
    def release(self) -> None:
        self._released = True
