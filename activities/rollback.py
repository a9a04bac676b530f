"""The rollback step: runs on any failure after compose up started.

Two activities. `compose_rollback` puts the service back on the image it ran
before compose up: for an apply, the host agent's `rollback` verb pins the
image the agent itself recorded before this run's compose up, under the run's
lease; for an operator's rollback (and a host whose agent predates the verb),
`docker compose -f F -f - up -d --no-deps --no-build --pull never SERVICE`
with a one-service JSON image pin on standard input. Either way the compose
file on the host is not touched and sibling services stay as they are (the
workflow then watches its health again).
`rollback` records what happened in the module's status file and says so
loudly (the ROLLBACK log line and notification go out even when the record
cannot be written), whether or not the images could be put back. A worker
that dies after recording gets the step run again on the next worker: when
the status file already holds this run's failure, it was recorded and said,
and nothing is done again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity

from activities import host_agent
from activities.base import Deps, StepActivities, ran, step
from activities.compose_up import AGENT_MARGIN_S
from activities.single_flight import SingleFlight
from platformctl import commands
from platformctl.models import ComposeUpResult, RollbackImagesInput, RollbackInput, RollbackRecord
from platformctl.notify import Notification, send
from platformctl.outcomes import PolicyViolation, RemoteFailed
from platformctl.policy.approval import check_signature
from platformctl.redact import redact
from platformctl.state import StatusRecord, display_path, now_iso, read_status, status_path, write_status
from platformctl.target import check_unchanged


class RollbackImages(StepActivities):
    def __init__(self, deps: Deps, runs: SingleFlight) -> None:
        super().__init__(deps)
        self._runs = runs  # compose up's: one run however often the server retries, none overlapping

    @activity.defn(name="compose_rollback")
    @step
    async def compose_rollback(self, inp: RollbackImagesInput) -> ComposeUpResult:
        return await self._runs.run((inp.target.host.name, inp.target.project), lambda: self._compose_rollback(inp))

    async def _compose_rollback(self, inp: RollbackImagesInput) -> ComposeUpResult:
        target = inp.target
        settings = self.deps.settings
        command = commands.compose_rollback(target.compose_path, target.compose_service, inp.image_id)
        if not (target.execute and settings.execute_remote):
            raise PolicyViolation("an image rollback needs PLATFORMCTL_PHASE=05, like compose up")
        check_unchanged(settings, inp.module, target)
        if inp.approval is None:  # an apply's own rollback: the agent pins what it recorded
            try:
                return await self._agent_rollback(inp)
            except host_agent.OlderAgent:
                activity.logger.warning("%s: the host agent predates `rollback`: pinning by ID", target.host.name)
        if inp.approval is not None and activity.info().attempt == 1:
            # An operator's request, signed when a key is set: still unexpired, and signed
            # with the key as it is now, when the host changes (the lock wait may be long).
            # A later attempt finishes what the first decided: that one may have pinned already.
            check_signature(settings.approval_key(), inp.module, inp.approval, datetime.now(UTC))
        activity.logger.warning("rolling back on %s: %s (image %s)", target.host.name, command.render(), inp.image_id)
        out = await self.deps.transport.run(target.host, command, timeout_s=inp.timeout_seconds)
        return ran(command, out)


    async def _agent_rollback(self, inp: RollbackImagesInput) -> ComposeUpResult:
        target = inp.target
        run = activity.info().workflow_run_id or ""
        command = commands.agent_rollback(run, inp.timeout_seconds, target.compose_path, target.compose_service)
        activity.logger.warning("rolling back on %s: %s", target.host.name, command.render())
        answer = await host_agent.ask(
            self.deps.transport, target, command, run, "rollback",
            timeout_s=inp.timeout_seconds + AGENT_MARGIN_S, busy_for_s=AGENT_MARGIN_S,
        )  # fmt: skip
        host = target.host.name
        if answer.answer == "busy":
            raise RemoteFailed(f"{host}: project busy on the host (held by {host_agent.holder(answer, run)})")
        if answer.answer == "lease_lost":
            raise RemoteFailed(f"{host}: lease lost to run {answer.holder}: the project is another apply's now")
        if answer.reason == "not_applied":
            return ComposeUpResult(executed=False, command=command.render())  # nothing to put back
        if answer.answer == "interrupted":
            raise RemoteFailed(f"{host}: the rollback of this run was interrupted on the host; never run twice")
        if answer.answer != "ran":
            why = {"no_snapshot": "the agent recorded no one image before compose up",
                   "undefined_service": "the compose file does not define the service"}.get(
                       answer.reason or "", "nothing was put back")
            refused = answer.reason or answer.answer
            raise PolicyViolation(f"{host}: the host agent refused the rollback ({refused}): {why}")
        if answer.image_id != inp.image_id:
            activity.logger.warning("%s: the agent put back %s, the worker's snapshot saw %s", host,
                                    answer.image_id, inp.image_id)  # fmt: skip
        return host_agent.ran(command, answer)


class Rollback(StepActivities):
    @activity.defn(name="rollback")
    @step
    async def rollback(self, inp: RollbackInput) -> RollbackRecord:
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
            self._log(inp, last_good, extra)
            await self._notify(inp, extra)
            raise
        self._log(inp, last_good, "")
        await self._notify(inp, "")
        return record.model_copy(update={"state_artifact": display_path(path, settings.platform_root)})

    @staticmethod
    async def _notify(inp: RollbackInput, extra: str) -> None:
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
    def _log(inp: RollbackInput, last_good: str | None, extra: str) -> None:
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
