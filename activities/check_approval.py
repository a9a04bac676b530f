"""Step 2 activity: the approval must be for this exact plan."""

from __future__ import annotations

from temporalio import activity

from activities.base import StepActivities, step
from platformctl.models import CheckApprovalInput
from platformctl.policy.approval import check_approval


class CheckApproval(StepActivities):
    @activity.defn(name="check_approval")
    @step
    async def check_approval(self, inp: CheckApprovalInput) -> None:
        check_approval(inp.plan, inp.approval)
