"""What the worker records and tells: its disk, the module's state in Temporal, notifications.

An applied outcome replaces the module's status file, a failure updates its
`status` and `last_failure`; every outcome appends one audit line
(`platformctl.state` builds both). Each of these runs again after a crash
and then finds its own record and does nothing twice.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict
from temporalio import activity

from activities.base import StepActivities, step
from platformctl.metrics import record_outcome
from platformctl.models import (
    ModuleEvent,
    PersistedState,
    PersistStateInput,
    PinRecord,
    RecordRollbackInput,
    RollbackInput,
    RollbackRecord,
)
from platformctl.module_state import event_for, record_event
from platformctl.notify import Notification, send
from platformctl.outcomes import SUCCESS, ToolError
from platformctl.redact import redact
from platformctl.state import (
    AuditLine,
    StatusRecord,
    append_audit,
    audit_has,
    display_path,
    now_iso,
    read_status,
    status_path,
    write_status,
)

log = logging.getLogger("platform.apply")
# Failed outcomes a person must look at (blocked, rejected, ... are answers, not incidents).
NOTIFIED = frozenset({"remote_failed", "unhealthy", "tool_error", "cancelled"})


def _reason(e: Exception) -> str:
    return str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"


def _plain(text: str | None) -> str:
    """As is when it cannot break the line (a module id from a blocked input may be anything)."""
    if text is None:
        return "-"
    return text if text.isprintable() and " " not in text else repr(text[:64])


class NotifyInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event: Literal["awaiting_approval", "approval_expiring"]
    module: str
    host: str | None = None
    workflow_id: str
    deadline: str | None = None  # ISO-8601 UTC: when the approval wait ends


class Records(StepActivities):
    @activity.defn(name="persist_state")
    @step
    async def persist_state(self, inp: PersistStateInput) -> PersistedState:
        """Step 7: record the outcome (status file, one audit line, the module's state in Temporal),
        then report it (a log line, metrics, a notification for failures). A local activity: a
        crash runs it again, and a run whose audit line is there already does nothing again."""
        line = AuditLine.of(inp, now_iso())
        if audit_has(self.deps.settings.state_dir, line):
            # Its line is written last: the module's state was told and the status file written too.
            activity.logger.info("outcome %s of this run was recorded before: not recorded again", line.status)
            return self._persisted(inp)
        # Temporal first: when it cannot be told, the retry writes no second audit line.
        await self._record_in_temporal(inp)
        if self._record(inp, line):
            await self._report(inp)
        return self._persisted(inp)

    async def _record_in_temporal(self, inp: PersistStateInput) -> None:
        """The module's state that re-apply, status and rollback read, the same for every worker."""
        try:
            key = self.deps.settings.approval_key()
        except ToolError as e:
            # The host runs it already: record it unsealed (an operator's rollback will not
            # pin its images) rather than fail an apply that succeeded.
            activity.logger.warning("the state record is not sealed: %s", e)
            key = None
        event = event_for(inp, now_iso(), key)
        if event is not None:
            await record_event(self.deps.client, self.deps.settings.task_queue, event)

    def _record(self, inp: PersistStateInput, line: AuditLine) -> bool:
        """False when a run of this activity for the same outcome (a frozen worker thawed) wrote it first."""
        state_dir = self.deps.settings.state_dir
        result = inp.result
        if result.status != "applied":
            # A plan that validated (its host is known) names a real module; the rollback
            # step has recorded a failure after compose up in the status file already.
            if result.status not in SUCCESS and result.host is not None and result.rollback is None:
                self._record_failure(inp, line.at)
            # Whatever the outcome and however garbled its module id: one audit line. One that
            # cannot be written is tried again by the workflow, on durable timers.
            try:
                return append_audit(state_dir, line)
            except OSError as e:
                raise ToolError(
                    f"the audit line of this {result.status} outcome could not be written: {_reason(e)}"
                ) from None

        status_path(state_dir, result.module)  # a bad module id is refused before anything is written
        live = (
            f"compose up succeeded and the service is healthy on {result.host}, "
            f"but its state could not be recorded"
        )
        try:
            write_status(state_dir, StatusRecord.applied(inp, line.at))
        except Exception as e:
            raise ToolError(
                f"{live}: {_reason(e)}; the host runs {inp.source_sha}, the status file does not say so"
            ) from None
        try:
            return append_audit(state_dir, line)
        except Exception as e:
            raise ToolError(
                f"{live}: {_reason(e)}; the host runs {inp.source_sha} and the status file says so, "
                "but audit.jsonl has no line for it"
            ) from None

    def _record_failure(self, inp: PersistStateInput, at: str) -> None:
        """The status file's `status` and `last_failure`, its last good apply kept. Read and
        written with no await between: another outcome of the module on this worker cannot
        slip in. Best effort: the outcome stands, and its audit line records it."""
        state_dir = self.deps.settings.state_dir
        try:
            previous = read_status(state_dir, inp.result.module)
            write_status(state_dir, StatusRecord.after_failure(previous, inp, None, at))
        except Exception as e:
            activity.logger.warning(
                "status file of %s not updated for %s: %s", _plain(inp.result.module), inp.result.status, _reason(e)
            )

    def _persisted(self, inp: PersistStateInput) -> PersistedState:
        if inp.result.status != "applied":
            return PersistedState(state_artifact=None)
        path = status_path(self.deps.settings.state_dir, inp.result.module)
        return PersistedState(state_artifact=display_path(path, self.deps.settings.platform_root))

    async def _report(self, inp: PersistStateInput) -> None:
        result = inp.result
        duration = inp.duration_s
        error = f": {result.error.splitlines()[0][:300]}" if result.error else ""
        log.info(
            "apply %s@%s %s exit=%d in %s workflow=%s%s",
            _plain(result.module), _plain(result.host), result.status, result.exitCode,
            "?" if duration is None else f"{duration:.1f}s", inp.workflow_id, error,
        )
        # A module label only once the plan validated (its host is known): any id a blocked
        # input makes up would be a new series for as long as the worker runs.
        record_outcome(result.status, result.module if result.host is not None else None, duration)
        if result.status in NOTIFIED:
            await send(
                Notification(
                    event="apply_failed", module=result.module, host=result.host, status=result.status,
                    exitCode=result.exitCode, workflow_id=inp.workflow_id, error=result.error, at=now_iso(),
                    idempotency_key=f"{inp.run_id}/apply_failed",
                )
            )

    @activity.defn(name="rollback")
    @step
    async def rollback(self, inp: RollbackInput) -> RollbackRecord:
        """After any failure once compose up started: record it in the module's status file and
        say so loudly (the ROLLBACK line and notification go out even when the record cannot be
        written). A re-run whose status file already holds this run's failure does nothing again."""
        settings = self.deps.settings
        result = inp.result
        last_good: str | None = None
        record = RollbackRecord(
            reason=result.error or result.status,
            last_good_sha=None,
            state_artifact=None,
            action=inp.policy,
            image=inp.image,
        )
        try:
            previous = read_status(settings.state_dir, result.module)
            last_good = previous.last_apply_sha if previous else None
            record = record.model_copy(update={"last_good_sha": last_good})
            if previous is not None and previous.has_failure_of(inp):
                # Recorded, logged and notified by an earlier run of this activity.
                activity.logger.info("failure %s of this run was recorded before: not recorded again", result.status)
                path = status_path(settings.state_dir, result.module)
                return record.model_copy(update={"state_artifact": display_path(path, settings.platform_root)})
            path = write_status(settings.state_dir, StatusRecord.after_failure(previous, inp, record, now_iso()))
        except Exception as e:
            extra = f" The failure could not be recorded: {type(e).__name__}: {e}."
            self._log_rollback(inp, last_good, extra)
            await self._notify_rollback(inp, extra)
            raise
        self._log_rollback(inp, last_good, "")
        await self._notify_rollback(inp, "")
        return record.model_copy(update={"state_artifact": display_path(path, settings.platform_root)})

    @staticmethod
    async def _notify_rollback(inp: RollbackInput, extra: str) -> None:
        result = inp.result
        event = "rollback_failed" if _failed(inp) else "rollback"
        await send(
            Notification(
                event=event, module=result.module, host=result.host, status=result.status,
                exitCode=result.exitCode, workflow_id=inp.workflow_id,
                error=f"{result.error or result.status}. {_what_was_done(inp)}{extra}", at=now_iso(),
                idempotency_key=f"{activity.info().workflow_run_id}/{event}",
            )
        )

    @staticmethod
    def _log_rollback(inp: RollbackInput, last_good: str | None, extra: str) -> None:
        result = inp.result
        # ERROR when a person must act (nothing put back, or not healthy), WARNING when it is back.
        put_back = inp.image is not None and inp.image.outcome == "restored"
        log = activity.logger.warning if put_back and not extra else activity.logger.error
        log(
            redact(
                f"{'ROLLBACK FAILED' if _failed(inp) else 'ROLLBACK'} module={result.module} host={result.host} "
                f"status={result.status} sha={inp.source_sha}: {result.error}. {_what_was_done(inp)} "
                f"Last known good sha={last_good}.{extra}"
            )
        )

    @activity.defn(name="record_rollback")
    @step
    async def record_rollback(self, inp: RecordRollbackInput) -> None:
        """RollbackWorkflow's record: the audit line and, when the host changed, the module
        marked as pinned, so ReapplyWorkflow leaves it alone until the next approved apply."""
        out, req = inp.outcome, inp.request
        at = now_iso()
        if req is not None and inp.images and out.module:
            # The host runs older images now: re-apply must not undo that behind the operator's back.
            pin = PinRecord(
                sha=out.to_sha, images=inp.images, by=req.approved_by, reason=req.reason,
                workflow_id=inp.workflow_id, at=at,
            )
            event = ModuleEvent(module=out.module, pinned=pin)
            await record_event(self.deps.client, self.deps.settings.task_queue, event)
        written = append_audit(
            self.deps.settings.state_dir,
            AuditLine(
                at=at, workflow_id=inp.workflow_id, run_id=inp.run_id, module=out.module, host=out.host,
                status=out.status, exitCode=out.exitCode, source_sha=out.to_sha,
                approved_by=req.approved_by if req else None, error=out.error,
                snapshot=out.snapshot.images if out.snapshot else None, images=inp.images or None,
                reason=req.reason if req else None,
            ),
        )
        if not written:
            return  # a re-run of this step: this run's outcome was already recorded and reported
        error = f": {out.error.splitlines()[0][:300]}" if out.error else ""
        log.info(
            "rollback %s@%s %s exit=%d to=%s image=%s workflow=%s%s",
            out.module, out.host, out.status, out.exitCode, out.to_sha, out.image_id, inp.workflow_id, error,
        )
        if out.status in ("remote_failed", "unhealthy", "tool_error"):
            await send(
                Notification(
                    event="rollback_failed", module=out.module, host=out.host, status=out.status,
                    exitCode=out.exitCode, workflow_id=inp.workflow_id, error=out.error, at=at,
                    idempotency_key=f"{activity.info().workflow_run_id}/rollback_failed",
                )
            )

    @activity.defn(name="notify")
    @step
    async def notify(self, inp: NotifyInput) -> bool:
        """Tell a person an apply needs them (approval awaited or about to expire), best effort:
        True when the endpoint accepted it; False when none is configured or it failed."""
        return await send(
            Notification(
                event=inp.event, module=inp.module, host=inp.host, workflow_id=inp.workflow_id,
                deadline=inp.deadline, at=now_iso(),
                idempotency_key=f"{activity.info().workflow_run_id}/{inp.event}",
            )
        )


def _failed(inp: RollbackInput) -> bool:
    """An image rollback ran and the service is not back healthy."""
    return inp.image is not None and inp.image.outcome in ("failed", "unhealthy")


def _what_was_done(inp: RollbackInput) -> str:
    image = inp.image
    if inp.policy == "record":
        return "Rollback policy is record: the service was left as it is; check it on the host."
    if image is None:
        return "No image rollback: check the service on the host."
    if image.outcome == "skipped":
        return f"No image rollback: {image.error}. Check the service on the host."
    if image.outcome == "failed":
        return f"The image rollback to {image.image_id} FAILED ({image.error}): check the service on the host."
    if image.outcome == "unhealthy":
        return f"The service was put back on image {image.image_id} but is NOT healthy ({image.error}): check it."
    return f"The service is back on image {image.image_id} and healthy."
