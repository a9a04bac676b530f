"""Before compose up (and after a healthy one): which images the service runs.

The snapshot is what an image rollback goes back to, so it is taken under the
project lock, right before anything changes. A listing that fails or cannot be
read stops the apply before compose up: changing a service we could not put
back is not safe by default.
"""

from __future__ import annotations

from temporalio import activity

from activities.base import StepActivities, step
from platformctl import commands
from platformctl.models import ImageSnapshot, SnapshotInput
from platformctl.outcomes import RemoteFailed
from platformctl.policy.remote_output import failure
from platformctl.policy.snapshot import UnreadableImages, parse_images
from platformctl.target import check_unchanged

IMAGES_TIMEOUT_S = 30


class SnapshotImages(StepActivities):
    @activity.defn(name="compose_images")
    @step
    async def compose_images(self, inp: SnapshotInput) -> ImageSnapshot:
        target = inp.target
        check_unchanged(self.deps.settings, inp.module, target)
        command = commands.compose_images(target.compose_path, target.compose_service)
        out = await self.deps.transport.run(target.host, command, timeout_s=IMAGES_TIMEOUT_S)
        if out.returncode != 0:
            why = failure(out.returncode, out.timed_out, out.stdout, out.stderr)
            raise RemoteFailed(f"compose images {why} on {target.host.name}")
        try:
            return parse_images(out.stdout)
        except UnreadableImages as e:
            raise RemoteFailed(f"{e} (on {target.host.name})") from None
