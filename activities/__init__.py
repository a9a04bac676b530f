"""The worker's activities, one class per set of dependencies; `build_activities` binds them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.base import Deps
from activities.checks import Checks
from activities.lookups import Lookups
from activities.records import Records
from activities.remote_steps import RemoteSteps


def build_activities(deps: Deps) -> list[Callable[..., Any]]:
    checks, remote, records, lookups = Checks(deps), RemoteSteps(deps), Records(deps), Lookups(deps)
    return [
        checks.validate_plan,
        checks.check_approval,
        checks.guard_compose_path,
        checks.check_host_allowlist,
        remote.verify_checkout,
        remote.compose_images,
        remote.compose_up,
        remote.compose_ps,
        remote.compose_rollback,
        remote.release_lease,
        records.persist_state,
        records.rollback,
        records.record_rollback,
        records.notify,
        lookups.describe_lock_holder,
        lookups.plan_reapply,
        lookups.plan_rollback,
    ]


__all__ = ["Deps", "build_activities"]
