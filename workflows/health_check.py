"""Step 6, the health smoke: poll the service on durable timers until it stays
healthy for its stable window, or fail with a contract status. Shared by an
apply, its image rollback and an operator's rollback."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.remote_steps import RemoteSteps
    from platformctl.models import ComposePsInput, HealthConfig, HealthRecord, ServiceObservation, Target
    from platformctl.policy.health import verdict
    from workflows.steps import APPLY_WORKFLOW, READ_STEP, Steps, Stop

# Patches the previous version asked here (workflows/dynamic.py: deprecated patches).
HEALTH_OBSERVED_PATCH = "health-observed"  # a RollbackWorkflow's health smoke
HEALTH_MISSED_POLL_PATCH = "health-missed-poll"  # a poll that could not reach the host
HOST_UNOBSERVED = "host unreachable during the health check; no rollback (the release may be healthy)"
# A poll that comes this much later than planned means nobody was looking (Temporal or the
# worker was down, or the host was slow to answer): that gap is neither stable time nor
# spent health timeout. Small: it only ever restarts the stable window, never fails one.
OUTAGE_GAP_S = 3.0


async def watch(
    steps: Steps, target: Target, module: str, cfg: HealthConfig, on_poll: Callable[[HealthRecord, HealthConfig], None]
) -> HealthRecord:
    """Poll with durable timers until healthy for a stable window, or fail.

    Judged by what the polls saw: a gap between two polls much longer than
    planned (Temporal or the worker was down) restarts the stable window and
    costs the timeout one poll, not the outage's length. A poll that cannot
    reach the host is a missed observation, not a verdict: the stable window
    restarts and the time passes; when the timeout ends on one, the apply ends
    `remote_failed` with no rollback, as nothing was seen to fail."""
    steps.asked_by_rollbacks(HEALTH_OBSERVED_PATCH)
    last = workflow.now()
    healthy_since = None
    window_restarts: int | None = None  # the restart count when the stable window began
    waited = 0.0
    while True:
        try:
            seen: ServiceObservation | None = await steps.run(
                RemoteSteps.compose_ps, ComposePsInput(target=target, module=module), remote=True, **READ_STEP
            )
        except Stop as stop:
            if stop.status != "remote_failed":
                raise
            workflow.deprecate_patch(HEALTH_MISSED_POLL_PATCH)
            workflow.logger.warning("health poll missed: %s", stop.message)
            seen = None
        now = workflow.now()
        gap = (now - last).total_seconds()
        # A missed poll's time counts in full: the host, not Temporal, was away.
        if seen is not None and gap > cfg.poll_seconds + OUTAGE_GAP_S:
            workflow.logger.warning("health smoke saw nothing for %.0f s: its stable window starts again", gap)
            healthy_since, gap = None, cfg.poll_seconds
        waited += gap
        last = now
        if seen is not None and seen.lease_lost_to is not None:
            # Another apply holds the project now: judging or undoing its release is not ours.
            raise Stop("remote_failed", f"lease lost to run {seen.lease_lost_to}; no rollback", restore=False)
        if seen is None or seen.retaken:
            healthy_since = None  # unseen, or the lease lapsed: nothing says it stayed stable
        if seen is None:
            if waited >= cfg.timeout_seconds:
                raise Stop("remote_failed", HOST_UNOBSERVED, restore=False)
            await workflow.sleep(timedelta(seconds=min(cfg.poll_seconds, max(1.0, cfg.timeout_seconds - waited))))
            continue
        state = verdict(seen)
        restarts = seen.restart_count
        if healthy_since is not None and window_restarts is not None and restarts is not None:
            if restarts > window_restarts:  # a crash loop can look running at every poll
                raise Stop(
                    "unhealthy",
                    f"service {target.compose_service!r} restarted during its stable window "
                    f"(restart count {window_restarts} -> {restarts})",
                )
        if healthy_since is None:
            window_restarts = seen.restart_count
        healthy_since = (healthy_since or now) if state == "healthy" else None
        stable_s = (now - healthy_since).total_seconds() if healthy_since else 0.0
        record = HealthRecord(
            state=seen.state or "absent",
            health=seen.health or "none",
            observed_s=round(stable_s, 1),
            exit_code=seen.exit_code,
        )
        on_poll(record, cfg)
        if state == "healthy" and stable_s >= cfg.stable_seconds:
            return record
        if state == "failed":
            raise Stop("unhealthy", f"service {target.compose_service!r} stopped: {seen_text(record)}{_kept(seen)}")
        if waited >= cfg.timeout_seconds:
            why = f"; last poll: {seen.error}" if seen.error else ""
            raise Stop(
                "unhealthy",
                f"service {target.compose_service!r} did not stay healthy for {cfg.stable_seconds}s "
                f"within {cfg.timeout_seconds}s: {seen_text(record)}{why}{_kept(seen)}",
            )
        await workflow.sleep(timedelta(seconds=min(cfg.poll_seconds, max(1.0, cfg.timeout_seconds - waited))))


def seen_text(h: HealthRecord) -> str:
    """What a health poll saw, as messages and the UI details say it."""
    code = f", exit code {h.exit_code}" if h.exit_code is not None else ""
    return f"state={h.state}, health={h.health}{code}"


def _kept(seen: ServiceObservation) -> str:
    """Where to read why, when the host kept a failing container's logs (an apply's run only:
    `platform-apply logs` reads ApplyWorkflow runs)."""
    info = workflow.info()
    if not seen.logs_kept or info.workflow_type != APPLY_WORKFLOW:
        return ""
    return f"; its last log lines are kept on the host: platform-apply logs {info.workflow_id}"


def details(cfg: HealthConfig, last_seen: HealthRecord | None = None) -> str:
    """The UI's current details while the health smoke polls."""
    last = f" Last: {seen_text(last_seen)}, stable {last_seen.observed_s} s." if last_seen else ""
    window = f"healthy for {cfg.stable_seconds} s (fails after {cfg.timeout_seconds} s)"
    return f"Polling `compose ps` until {window}.{last}"
