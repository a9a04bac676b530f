"""The rollback hook: runs on any failure after compose up started.

A full automatic revert is a later step. For now it records the failure in
the module's status file, keeps the last known good apply, and says so loudly
(the ROLLBACK log line and notification go out even when the record cannot be).
"""

from __future__ import annotations

from temporalio import activity

from activities.base import StepActivities, step
from platformctl.models import RollbackInput, RollbackRecord
from platformctl.notify import Notification, send
from platformctl.redact import redact
from platformctl.state import StatusRecord, display_path, now_iso, read_status, write_status


class Rollback(StepActivities):
    @activity.defn(name="rollback")
    @step
    async def rollback(self, inp: RollbackInput) -> RollbackRecord:
        settings = self.deps.settings
        result = inp.result
        last_good: str | None = None
        try:
            previous = read_status(settings.state_dir, result.module)
            last_good = previous.last_apply_sha if previous else None
            path = write_status(settings.state_dir, StatusRecord.after_failure(previous, inp, now_iso()))
        except Exception as e:
            extra = f" The failure could not be recorded: {type(e).__name__}: {e}."
            self._log(inp, last_good, extra)
            await self._notify(inp, extra)
            raise
        self._log(inp, last_good, "")
        await self._notify(inp, "")
        return RollbackRecord(
            reason=result.error or result.status,
            last_good_sha=last_good,
            state_artifact=display_path(path, settings.platform_root),
        )

    @staticmethod
    async def _notify(inp: RollbackInput, extra: str) -> None:
        result = inp.result
        await send(
            Notification(
                event="rollback", module=result.module, host=result.host, status=result.status,
                exitCode=result.exitCode, workflow_id=inp.workflow_id,
                error=f"{result.error or result.status}.{extra}", at=now_iso(),
            )
        )

    @staticmethod
    def _log(inp: RollbackInput, last_good: str | None, extra: str) -> None:
        result = inp.result
        activity.logger.error(
            redact(
                f"ROLLBACK module={result.module} host={result.host} status={result.status} "
                f"sha={inp.source_sha}: {result.error}. Last known good sha={last_good}.{extra} "
                "No automatic revert yet: check the service on the host."
            )
        )
