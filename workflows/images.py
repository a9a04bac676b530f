"""What a service runs, and putting it back on an image: the snapshot before
compose up, the record after it, and the image pin of both rollbacks (an
apply's own, and an operator's RollbackWorkflow)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.rollback import RollbackImages
    from activities.snapshot_images import SnapshotImages
    from platformctl.models import Approval, ComposeUpResult, ImageSnapshot, RollbackImagesInput, SnapshotInput, Target
    from workflows.steps import READ_STEP, REMOTE_RETRY, Steps


async def listing(steps: Steps, target: Target, module: str) -> ImageSnapshot:
    """The images the service's containers run now (compose images)."""
    return await steps.run(
        SnapshotImages.compose_images, SnapshotInput(target=target, module=module), remote=True, **READ_STEP
    )


async def pin(
    steps: Steps, target: Target, module: str, image_id: str, timeout_s: int, approval: Approval | None = None
) -> ComposeUpResult:
    """The service back on `image_id`, the compose file on the host untouched. An
    operator's rollback sends its approval, checked again right before the pin.
    A cancel returns only once the command is gone on the host."""
    return await steps.run(
        RollbackImages.compose_rollback,
        RollbackImagesInput(
            target=target, module=module, image_id=image_id, timeout_seconds=timeout_s, approval=approval
        ),
        remote=True,
        start_to_close_timeout=timedelta(seconds=timeout_s + 60),
        heartbeat_timeout=timedelta(seconds=target.heartbeat_timeout_seconds),
        retry_policy=REMOTE_RETRY,
        cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    )
