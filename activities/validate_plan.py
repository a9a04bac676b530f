"""Step 1 activity: read the module file and validate the plan against it."""

from __future__ import annotations

from temporalio import activity

from activities.base import StepActivities, step
from platformctl.config import ModuleFile, load_module, load_rollback_policy
from platformctl.models import RollbackPolicy, ValidatedPlan, ValidatePlanInput
from platformctl.policy.plan import is_destructive, validate_plan


class ValidatePlan(StepActivities):
    @activity.defn(name="validate_plan")
    @step
    async def validate_plan(self, inp: ValidatePlanInput) -> ValidatedPlan:
        plan = inp.plan
        root = self.deps.settings.platform_root
        module = load_module(root, plan.module)
        validate_plan(plan, module.compose_service)
        return validated(
            module,
            plan_digest=inp.plan_digest,
            has_changes=bool(plan.changes),
            destructive=is_destructive(plan),
            rollback=load_rollback_policy(root, module),
        )


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
