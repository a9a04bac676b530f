"""Steps 1 to 4: checks that read only the platform files and the worker's settings.

Nothing here reaches a host or Temporal; the rules themselves are the pure
functions of `platformctl.policy`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from temporalio import activity

from activities.base import StepActivities, step
from platformctl.config import ModuleFile, load_hosts, load_module, load_rollback_policy, load_sacred_paths
from platformctl.models import (
    CheckApprovalInput,
    CheckHostInput,
    GuardComposePathInput,
    GuardedPath,
    RollbackPolicy,
    Target,
    ValidatedPlan,
    ValidatePlanInput,
)
from platformctl.outcomes import PolicyViolation, ToolError
from platformctl.policy.approval import check_approval, check_signature
from platformctl.policy.compose_path import guard_compose_path
from platformctl.policy.hosts import check_host, is_inline_pin, pinned_key_lines
from platformctl.policy.plan import compose_action, is_destructive, validate_plan
from platformctl.target import make_target


class Checks(StepActivities):
    @activity.defn(name="validate_plan")
    @step
    async def validate_plan(self, inp: ValidatePlanInput) -> ValidatedPlan:
        """Step 1: read the module file and validate the plan against it."""
        plan = inp.plan
        root = self.deps.settings.platform_root
        module = load_module(root, plan.module)
        validate_plan(plan, module.compose_service)
        if compose_action(plan) == "remove":
            # Compose up would leave the service running; refused before anything reaches a host.
            raise PolicyViolation("remove is not supported by this worker yet; nothing ran")
        return validated(
            module,
            plan_digest=inp.plan_digest,
            has_changes=bool(plan.changes),
            destructive=is_destructive(plan),
            rollback=load_rollback_policy(root, module),
        )

    @activity.defn(name="check_approval")
    @step
    async def check_approval(self, inp: CheckApprovalInput) -> None:
        """Step 2: the approval is for this exact plan (its digest), and signed when the worker has a key."""
        key = self.deps.settings.approval_key()
        check_approval(inp.plan, inp.approval, inp.plan_digest, signed=key is not None)
        check_signature(key, inp.plan.module, inp.approval, datetime.now(UTC))

    @activity.defn(name="guard_compose_path")
    @step
    async def guard_compose_path(self, inp: GuardComposePathInput) -> GuardedPath:
        """Step 3: the compose file resolves under the host's remote_root, away from sacred paths."""
        root = self.deps.settings.platform_root
        host = load_hosts(root).get(inp.host)
        if host is None:
            raise PolicyViolation(f"host {inp.host!r} is not in the hosts.yaml allowlist")
        path = guard_compose_path(inp.compose_file, host.remote_root, load_sacred_paths(root))
        return GuardedPath(remote_root=host.remote_root, compose_path=path)

    @activity.defn(name="check_host_allowlist")
    @step
    async def check_host_allowlist(self, inp: CheckHostInput) -> Target:
        """Step 4: the host is allowlisted, pinned and not root. It also fixes the command
        and reads the phase gate, once, so every later step (and replay) uses that decision."""
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


def validated(
    module: ModuleFile, *, plan_digest: str, has_changes: bool, destructive: bool, rollback: RollbackPolicy
) -> ValidatedPlan:
    """What later steps need from the module file, read once."""
    return ValidatedPlan(
        module=module.id,
        host=module.host,
        compose_file=module.spec.runtime.compose_file,
        compose_service=module.compose_service,
        up_timeout_seconds=module.spec.runtime.up_timeout_seconds,
        health=module.spec.health,
        plan_digest=plan_digest,
        has_changes=has_changes,
        destructive=destructive,
        rollback=rollback,
    )
