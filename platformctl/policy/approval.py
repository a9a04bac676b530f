"""Step 2: is this approval for exactly this plan, and enough for its actions?"""

from __future__ import annotations

from platformctl.models import DESTRUCTIVE_ACTIONS, Approval, Plan
from platformctl.outcomes import ApprovalMismatch, DestructiveNeedsApproval
from platformctl.policy.plan import SHA, is_destructive


def check_approval(plan: Plan, approval: Approval) -> None:
    if not SHA.fullmatch(approval.approved_sha) or approval.approved_sha != plan.source_sha:
        raise ApprovalMismatch(
            f"approval is for {approval.approved_sha!r}, but the plan is for {plan.source_sha!r}"
        )
    if approval.approved_pr is None or approval.approved_pr <= 0:
        raise ApprovalMismatch(f"approval names no usable pull request number (got {approval.approved_pr!r})")
    if is_destructive(plan) and not approval.allow_destructive:
        actions = sorted({c.action for c in plan.changes if c.action in DESTRUCTIVE_ACTIONS})
        raise DestructiveNeedsApproval(
            f"plan has destructive actions {actions}: the approval must set allow_destructive"
        )
