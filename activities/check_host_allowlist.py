"""Step 4 activity: the host must be allowlisted, pinned and not root.

It also fixes the command and reads the phase gate, once, so every later step
(and every replay) works from the same decision.
"""

from __future__ import annotations

from pathlib import Path

from temporalio import activity

from activities.base import StepActivities, step
from platformctl.config import load_hosts
from platformctl.models import CheckHostInput, Target
from platformctl.outcomes import PolicyViolation, ToolError
from platformctl.policy.hosts import check_host, is_inline_pin, pinned_key_lines
from platformctl.target import make_target


class CheckHostAllowlist(StepActivities):
    @activity.defn(name="check_host_allowlist")
    @step
    async def check_host_allowlist(self, inp: CheckHostInput) -> Target:
        host = check_host(inp.host, load_hosts(self.deps.settings.platform_root))
        if host.remote_root != inp.guarded.remote_root:
            raise PolicyViolation(f"hosts.yaml changed remote_root of {inp.host!r} during this apply")
        if not is_inline_pin(host.known_hosts):
            pin = Path(host.known_hosts).expanduser()
            if not pin.is_file() or not pinned_key_lines(pin.read_text(encoding="utf-8")):
                raise PolicyViolation(
                    f"host {inp.host!r}: pinned known_hosts file {host.known_hosts!r} is missing or empty"
                )
        if not Path(host.client_key).expanduser().is_file():
            raise ToolError(f"host {inp.host!r}: client_key {host.client_key!r} is not a readable file on this worker")
        return make_target(host, inp.guarded.compose_path, inp.compose_service, self.deps.settings)
