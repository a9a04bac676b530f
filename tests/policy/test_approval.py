"""Step 2 policy: `check_approval` binds an approval to exactly one plan."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from platformctl.models import Approval, Plan
from platformctl.outcomes import ApprovalMismatch, DestructiveNeedsApproval
from platformctl.policy.approval import check_approval
from tests.platform_files import OTHER_SHA, SHA, approval, change, plan


def check(plan_: dict, approval_: dict) -> None:
    check_approval(Plan.model_validate(plan_), Approval.model_validate(approval_))


def test_matching_approval_passes():
    check(plan(), approval())


@pytest.mark.parametrize(
    "sha",
    [OTHER_SHA, SHA.upper(), SHA[:12], SHA + " ", ""],
    ids=["other-sha", "upper-case", "short", "trailing-space", "empty"],
)
def test_approval_for_another_sha_is_a_mismatch(sha):
    with pytest.raises(ApprovalMismatch, match="approval is for .* but the plan is for"):
        check(plan(), approval(sha=sha))


def test_upper_case_sha_on_both_sides_is_still_a_mismatch():
    # The plan would be blocked earlier; the approval check does not rely on that.
    with pytest.raises(ApprovalMismatch):
        check(plan(sha=SHA.upper()), approval(sha=SHA.upper()))


@pytest.mark.parametrize("pr", [None, 0, -1, -165])
def test_approval_needs_a_positive_pr_number(pr):
    with pytest.raises(ApprovalMismatch, match="no usable pull request number"):
        check(plan(), approval(pr=pr))


def test_missing_pr_field_is_a_mismatch():
    given = approval()
    del given["approved_pr"]
    with pytest.raises(ApprovalMismatch, match="no usable pull request number"):
        check(plan(), given)


@pytest.mark.parametrize("pr", [True, "165", 165.0])
def test_a_pr_number_must_be_a_json_integer(pr):
    # The workflow turns an approval that does not parse into approval_mismatch.
    with pytest.raises(ValidationError, match="approved_pr"):
        Approval.model_validate(approval(pr=pr))


@pytest.mark.parametrize("action", ["recreate", "remove"])
def test_destructive_action_needs_allow_destructive(action):
    destructive = plan(changes=[change(), change(action=action)])
    with pytest.raises(DestructiveNeedsApproval, match=rf"\['{action}'\].*allow_destructive"):
        check(destructive, approval())
    check(destructive, approval(allow_destructive=True))


def test_destructive_message_lists_every_destructive_action_once():
    both = plan(changes=[change(action="remove"), change(action="recreate"), change(action="remove")])
    with pytest.raises(DestructiveNeedsApproval, match=r"\['recreate', 'remove'\]"):
        check(both, approval())


def test_sha_mismatch_is_reported_before_the_destructive_check():
    with pytest.raises(ApprovalMismatch):
        check(plan(changes=[change(action="remove")]), approval(sha=OTHER_SHA))
