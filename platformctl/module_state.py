"""Reporting an outcome to the module's state workflow (workflows/module_state.py), and reading it."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from platformctl.client import PLATFORM_KIND
from platformctl.config import MODULE_ID
from platformctl.models import AppliedRecord, FailedRecord, ModuleEvent, ModuleState, PersistStateInput
from platformctl.policy.record_seal import seal

RECORD = "record"


def module_state_id(task_queue: str, module: str) -> str:
    """Per task queue: two platforms served in one namespace keep their own state."""
    return f"platform-module:{task_queue}/{module}"


async def read_state(
    client: Client, task_queue: str, module: str, rpc_timeout: timedelta | None = None
) -> ModuleState | None:
    """The module's recorded state; None when it never recorded anything (no state workflow)."""
    handle = client.get_workflow_handle(module_state_id(task_queue, module))
    try:
        state: ModuleState | None = await handle.query("state", result_type=ModuleState, rpc_timeout=rpc_timeout)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return state


async def record_event(client: Client, task_queue: str, event: ModuleEvent) -> None:
    """Signal the module's state workflow, starting it if it does not run yet."""
    await client.start_workflow(
        "ModuleStateWorkflow",
        ModuleState(module=event.module),
        id=module_state_id(task_queue, event.module),
        task_queue=task_queue,
        start_signal=RECORD,
        start_signal_args=[event],
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"state of module {event.module}",
        search_attributes=TypedSearchAttributes([SearchAttributePair(PLATFORM_KIND, "module_state")]),
    )


def event_for(inp: PersistStateInput, at: str, key: bytes | None) -> ModuleEvent | None:
    """What an outcome tells the module's state: a success (sealed with the signing
    key, when there is one), a failure that touched the host, or nothing (refused
    before compose up, so the host is as it was)."""
    result = inp.result
    if result.module is None or not MODULE_ID.fullmatch(result.module):
        return None
    if result.status == "applied" and inp.plan is not None and inp.approval is not None and inp.source_sha:
        applied = AppliedRecord(
            sha=inp.source_sha,
            pr=inp.approved_pr,
            approved_by=inp.approved_by,
            plan=inp.plan,
            plan_raw=inp.plan_raw,
            approval=inp.approval,
            plan_digest=inp.plan_digest,
            workflow_id=inp.workflow_id,
            host=result.host,
            compose_service=result.compose_service,
            at=at,
            images=result.images.images if result.images else [],
            images_before=result.snapshot.images if result.snapshot else [],
        )
        if key is not None:
            applied.seal = seal(key, result.module, applied)
        return ModuleEvent(module=result.module, applied=applied)
    if result.remote is not None or result.rollback is not None:
        failed = FailedRecord(
            sha=inp.source_sha, status=result.status, error=result.error, workflow_id=inp.workflow_id, at=at,
            rollback=result.rollback,
        )
        return ModuleEvent(module=result.module, failed=failed)
    return None
