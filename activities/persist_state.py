"""Step 7 activity: record the outcome on the worker's disk, then report it.

An applied outcome replaces the module's status file, a failure before compose
up updates its `status` and `last_failure` (the rollback step records the
others); every outcome, applied or not, appends one audit line.
`platformctl.state` builds both records.
Once recorded, the outcome is one INFO line, a count and a duration in the
metrics, and for failures a notification. It runs as a local activity, so a
crash runs it again on the next worker: a run whose audit line for this
outcome is there already is recorded and reported, and nothing is done again.
"""

from __future__ import annotations

import logging

from temporalio import activity

from activities.base import StepActivities, step
from platformctl.metrics import record_outcome
from platformctl.models import PersistedState, PersistStateInput
from platformctl.module_state import event_for, record_event
from platformctl.notify import Notification, send
from platformctl.outcomes import SUCCESS, ToolError
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

__all__ = ["PersistState", "now_iso"]

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


class PersistState(StepActivities):
    @activity.defn(name="persist_state")
    @step
    async def persist_state(self, inp: PersistStateInput) -> PersistedState:
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
