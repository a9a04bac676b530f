"""Step 7 activity: record the outcome on the worker's disk.

An applied outcome replaces the module's status file; every outcome, applied
or not, appends one audit line. `platformctl.state` builds both records.
"""

from __future__ import annotations

from temporalio import activity

from activities.base import StepActivities, step
from platformctl.models import PersistedState, PersistStateInput
from platformctl.outcomes import ToolError
from platformctl.state import (
    AuditLine,
    StatusRecord,
    append_audit,
    display_path,
    now_iso,
    status_path,
    write_status,
)

__all__ = ["PersistState", "now_iso"]


def _reason(e: Exception) -> str:
    return str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"


class PersistState(StepActivities):
    @activity.defn(name="persist_state")
    @step
    async def persist_state(self, inp: PersistStateInput) -> PersistedState:
        state_dir = self.deps.settings.state_dir
        result = inp.result
        at = now_iso()
        line = AuditLine.of(inp, at)
        if result.status != "applied":
            # Whatever the outcome and however garbled its module id: one audit line, no status file.
            append_audit(state_dir, line)
            return PersistedState(state_artifact=None)

        status_path(state_dir, result.module)  # a bad module id is refused before anything is written
        live = (
            f"compose up succeeded and the service is healthy on {result.host}, "
            f"but its state could not be recorded"
        )
        try:
            path = write_status(state_dir, StatusRecord.applied(inp, at))
        except Exception as e:
            raise ToolError(
                f"{live}: {_reason(e)}; the host runs {inp.source_sha}, the status file does not say so"
            ) from None
        try:
            append_audit(state_dir, line)
        except Exception as e:
            raise ToolError(
                f"{live}: {_reason(e)}; the host runs {inp.source_sha} and the status file says so, "
                "but audit.jsonl has no line for it"
            ) from None
        return PersistedState(state_artifact=display_path(path, self.deps.settings.platform_root))
