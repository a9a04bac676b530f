"""The rollback hook: runs on any failure after compose up started.

A full automatic revert is a later step. For now it records the failure in
the module's status file, keeps the last known good SHA, and says so loudly.
"""

from __future__ import annotations

from temporalio import activity

from activities.base import StepActivities, step
from activities.persist_state import now_iso
from platformctl.models import RollbackInput, RollbackRecord
from platformctl.state import display_path, read_status, write_status


class Rollback(StepActivities):
    @activity.defn(name="rollback")
    @step
    async def rollback(self, inp: RollbackInput) -> RollbackRecord:
        settings = self.deps.settings
        result = inp.result
        module = result.module or ""
        previous = read_status(settings.state_dir, module) or {}
        last_good = previous.get("last_apply_sha")
        record = {
            "module": module,
            "host": result.host,
            "compose_service": result.compose_service,
            "last_apply_sha": last_good,
            "last_apply_pr": previous.get("last_apply_pr"),
            "plan_digest": previous.get("plan_digest"),
            "applied_at": previous.get("applied_at"),
            "workflow_id": previous.get("workflow_id"),
            "status": result.status,
            "last_failure": {
                "at": now_iso(),
                "status": result.status,
                "source_sha": inp.source_sha,
                "workflow_id": inp.workflow_id,
                "error": result.error,
            },
        }
        path = write_status(settings.state_dir, module, record)
        activity.logger.error(
            "ROLLBACK module=%s host=%s status=%s sha=%s: %s. Last known good sha=%s. "
            "No automatic revert yet: check the service on the host.",
            module, result.host, result.status, inp.source_sha, result.error, last_good,
        )
        return RollbackRecord(
            reason=result.error or result.status,
            last_good_sha=last_good,
            state_artifact=display_path(path, settings.platform_root),
        )
