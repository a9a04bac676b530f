"""Step 2 activity: the approval must be for this exact plan (its plan_digest),
and signed when the worker has a signing key."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity

from activities.base import StepActivities, step
from platformctl.models import CheckApprovalInput
from platformctl.policy.approval import check_approval, check_signature


class CheckApproval(StepActivities):
    @activity.defn(name="check_approval")
    @step
    async def check_approval(self, inp: CheckApprovalInput) -> None:
        key = self.deps.settings.approval_key()
        check_approval(inp.plan, inp.approval, inp.plan_digest, signed=key is not None)
        check_signature(key, inp.plan.module, inp.approval, datetime.now(UTC))
