"""What a service runs, and putting it back on an image: the snapshot before
compose up, the record after it, and the image pin of both rollbacks (an
apply's own, and an operator's RollbackWorkflow)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.remote_steps import RemoteSteps
    from platformctl.models import (
        Approval,
        ComposeUpResult,
        HealthConfig,
        HealthRecord,
        ImageRollback,
        ImageSnapshot,
        RollbackImagesInput,
        SnapshotInput,
        Target,
        ValidatedPlan,
    )
    from platformctl.policy.snapshot import rollback_image
    from workflows import health_check
    from workflows.steps import READ_STEP, REMOTE_RETRY, Steps, Stop


async def listing(steps: Steps, target: Target, module: str) -> ImageSnapshot:
    """The images the service's containers run now (compose images)."""
    return await steps.run(
        RemoteSteps.compose_images, SnapshotInput(target=target, module=module), remote=True, **READ_STEP
    )


async def pin(
    steps: Steps, target: Target, module: str, image_id: str, timeout_s: int, approval: Approval | None = None
) -> ComposeUpResult:
    """The service back on `image_id`, the compose file on the host untouched. An
    operator's rollback sends its approval, checked again right before the pin.
    A cancel returns only once the command is gone on the host."""
    return await steps.run(
        RemoteSteps.compose_rollback,
        RollbackImagesInput(
            target=target, module=module, image_id=image_id, timeout_seconds=timeout_s, approval=approval
        ),
        remote=True,
        start_to_close_timeout=timedelta(seconds=timeout_s + 60),
        heartbeat_timeout=timedelta(seconds=target.heartbeat_timeout_seconds),
        retry_policy=REMOTE_RETRY,
        cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    )


async def restore(steps: Steps, target: Target, plan: ValidatedPlan, snapshot: ImageSnapshot) -> ImageRollback:
    """An apply's own rollback: the service back on the snapshot's image, with the file
    on the host untouched, then the module's health smoke again. Never raises: what it
    did goes in the result, and a failed rollback is not retried in a loop."""
    try:
        image_id = rollback_image(snapshot)
    except ValueError as e:
        return ImageRollback(outcome="skipped", error=str(e))
    steps.enter(
        "rolling_back",
        f"Putting `{target.compose_service}` on {target.host.name} back on image {image_id} "
        f"(killed after {plan.up_timeout_seconds} s).",
    )
    try:
        up = await pin(steps, target, plan.module, image_id, plan.up_timeout_seconds)
    except Stop as e:
        return ImageRollback(outcome="failed", image_id=image_id, error=e.message)
    if not up.executed:
        return ImageRollback(outcome="skipped", image_id=image_id, error="compose up never ran on the host")
    if up.timed_out or up.remote is None or up.remote.returncode != 0:
        why = (
            "still running after its timeout: killed"
            if up.timed_out
            else (f"exited with code {up.remote.returncode if up.remote else None}")
        )
        return ImageRollback(outcome="failed", image_id=image_id, remote=up.remote, error=f"compose up {why}")
    seen: list[HealthRecord] = []

    def on_poll(record: HealthRecord, cfg: HealthConfig) -> None:
        seen.append(record)
        steps.details(f"Rolled back to {image_id}. {health_check.details(cfg, record)}")

    try:
        health = await health_check.watch(steps, target, plan.module, plan.health, on_poll)
    except Stop as e:
        return ImageRollback(
            outcome="unhealthy",
            image_id=image_id,
            healthy=False,
            health=seen[-1] if seen else None,
            remote=up.remote,
            error=e.message,
        )
    return ImageRollback(outcome="restored", image_id=image_id, healthy=True, health=health, remote=up.remote)
