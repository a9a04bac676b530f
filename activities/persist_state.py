"""Step 7 activity: record the outcome on the worker's disk.

An applied outcome replaces the module's status file; every outcome, applied
or not, appends one audit line.
"""

from __future__ import annotations

from datetime import datetime, timezone

from temporalio import activity

from activities.base import StepActivities, step
from platformctl.models import PersistedState, PersistStateInput
from platformctl.state import append_audit, display_path, write_status


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class PersistState(StepActivities):
    @activity.defn(name="persist_state")
    @step
    async def persist_state(self, inp: PersistStateInput) -> PersistedState:
        settings = self.deps.settings
        result = inp.result
        at = now_iso()
        artifact = None
        if result.status == "applied" and result.module:
            path = write_status(
                settings.state_dir,
                result.module,
                {
                    "module": result.module,
                    "host": result.host,
                    "compose_service": result.compose_service,
                    "last_apply_sha": inp.source_sha,
                    "last_apply_pr": inp.approved_pr,
                    "plan_digest": inp.plan_digest,
                    "applied_at": at,
                    "workflow_id": inp.workflow_id,
                    "run_id": inp.run_id,
                    "status": result.status,
                    "command": result.command,
                },
            )
            artifact = display_path(path, settings.platform_root)
        append_audit(
            settings.state_dir,
            {
                "at": at,
                "workflow_id": inp.workflow_id,
                "run_id": inp.run_id,
                "module": result.module,
                "host": result.host,
                "status": result.status,
                "exitCode": result.exitCode,
                "source_sha": inp.source_sha,
                "approved_pr": inp.approved_pr,
                "plan_digest": inp.plan_digest,
                "command": result.command,
                "error": result.error,
            },
        )
        return PersistedState(state_artifact=artifact)
