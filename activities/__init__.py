"""One file per step of the apply; `build_activities` binds them to their dependencies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.base import Deps
from activities.check_approval import CheckApproval
from activities.check_host_allowlist import CheckHostAllowlist
from activities.compose_up import ComposeUp
from activities.guard_compose_path import GuardComposePath
from activities.health_smoke import HealthSmoke
from activities.lock_holder import DescribeLockHolder
from activities.notify import Notify
from activities.operator_rollback import PlanRollback, RecordRollback
from activities.persist_state import PersistState
from activities.reapply import Reapply
from activities.release_lease import ReleaseLease
from activities.rollback import Rollback, RollbackImages
from activities.single_flight import SingleFlight
from activities.snapshot_images import SnapshotImages
from activities.validate_plan import ValidatePlan
from activities.verify_checkout import VerifyCheckout


def build_activities(deps: Deps) -> list[Callable[..., Any]]:
    compose_runs = SingleFlight()
    return [
        ValidatePlan(deps).validate_plan,
        CheckApproval(deps).check_approval,
        GuardComposePath(deps).guard_compose_path,
        CheckHostAllowlist(deps).check_host_allowlist,
        VerifyCheckout(deps).verify_checkout,
        SnapshotImages(deps).compose_images,
        DescribeLockHolder(deps).describe_lock_holder,
        ComposeUp(deps, compose_runs).compose_up,
        HealthSmoke(deps).compose_ps,
        PersistState(deps).persist_state,
        ReleaseLease(deps).release_lease,
        RollbackImages(deps, compose_runs).compose_rollback,
        Rollback(deps).rollback,
        Notify(deps).notify,
        Reapply(deps).plan_reapply,
        PlanRollback(deps).plan_rollback,
        RecordRollback(deps).record_rollback,
    ]


__all__ = ["Deps", "build_activities"]
