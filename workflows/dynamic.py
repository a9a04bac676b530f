"""The worker's one dynamic workflow: each run goes to the class of its type
(ApplyWorkflow, RollbackWorkflow's OperatorRollback), which gets its input and
messages as raw payloads and reads them itself, so no payload fails a workflow
task. A type this worker does not know fails at once, for the same reason."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from platformctl.models import ApplyResult, RollbackOutcome
    from workflows.apply import ApplyWorkflow
    from workflows.rollback import ROLLBACK_WORKFLOW, OperatorRollback
    from workflows.steps import APPLY_WORKFLOW

# Deprecated patches (Temporal's patched, then deprecated, then gone): runs of the
# previous version hold their markers, so each is still asked, with
# workflow.deprecate_patch, where that version asked workflow.patched (here and in
# the step modules). The branches of the versions before it are gone
# (docs/upgrade.md): a worker replays the previous version's histories
# (tests/workflows/histories/v19) and its own.
LOCK_HAND_OVER_PATCH = "lock-hand-over"  # at the start of every apply and rollback


@workflow.defn(dynamic=True)
class PlatformWorkflow:
    def __init__(self) -> None:
        # Chosen before any message is handled: a signal may arrive with the start.
        kind = workflow.info().workflow_type
        self._kind = kind
        self._run: ApplyWorkflow | OperatorRollback | None = (
            ApplyWorkflow() if kind == APPLY_WORKFLOW else OperatorRollback() if kind == ROLLBACK_WORKFLOW else None
        )

    @workflow.run
    async def run(self, args: Sequence[RawValue]) -> ApplyResult | RollbackOutcome:
        if self._run is None:
            raise ApplicationError(
                f"unknown workflow type {self._kind[:100]!r}: this task queue runs {APPLY_WORKFLOW} and "
                f"{ROLLBACK_WORKFLOW}",
                type="UnknownWorkflowType",
                non_retryable=True,
            )
        workflow.deprecate_patch(LOCK_HAND_OVER_PATCH)
        return await self._run.run(args)

    @workflow.signal(dynamic=True)
    def on_signal(self, name: str, args: Sequence[RawValue]) -> None:
        if self._run is not None:
            self._run.on_signal(name, args)

    @workflow.update(dynamic=True)
    async def on_update(self, name: str, args: Sequence[RawValue]) -> dict[str, Any]:
        assert isinstance(self._run, ApplyWorkflow)  # the validator let nothing else through
        return await self._run.on_update(name, args)

    @on_update.validator
    def validate_update(self, name: str, args: Sequence[RawValue]) -> None:
        if not isinstance(self._run, ApplyWorkflow):
            raise ApplicationError(f"a {self._kind[:100]} takes no update", non_retryable=True)
        self._run.validate_update(name, args)

    @workflow.query
    def status(self) -> dict[str, Any]:
        return self._run.status() if self._run is not None else {"phase": "done", "status": "tool_error"}
