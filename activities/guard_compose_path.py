"""Step 3 activity: resolve the compose file under the host's remote_root."""

from __future__ import annotations

from temporalio import activity

from activities.base import StepActivities, step
from platformctl.config import load_hosts, load_sacred_paths
from platformctl.models import GuardComposePathInput, GuardedPath
from platformctl.outcomes import PolicyViolation
from platformctl.policy.compose_path import guard_compose_path


class GuardComposePath(StepActivities):
    @activity.defn(name="guard_compose_path")
    @step
    async def guard_compose_path(self, inp: GuardComposePathInput) -> GuardedPath:
        root = self.deps.settings.platform_root
        host = load_hosts(root).get(inp.host)
        if host is None:
            raise PolicyViolation(f"host {inp.host!r} is not in the hosts.yaml allowlist")
        path = guard_compose_path(inp.compose_file, host.remote_root, load_sacred_paths(root))
        return GuardedPath(remote_root=host.remote_root, compose_path=path)
