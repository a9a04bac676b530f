"""Step 2 policy: `check_approval` binds an approval to exactly one plan, and its
signature to what the signer held."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from platformctl.models import Approval, Plan
from platformctl.outcomes import ApprovalMismatch, DestructiveNeedsApproval
from platformctl.policy.approval import check_approval, check_binding, check_signature, sign
from platformctl.policy.plan import plan_digest
from tests.platform_files import OTHER_SHA, SHA, approval, change, plan

KEY = b"k" * 32
NOW = datetime(2026, 12, 7, tzinfo=UTC)


def check(plan_: dict, approval_: dict, *, signed: bool = False) -> None:
    check_approval(Plan.model_validate(plan_), Approval.model_validate(approval_), plan_digest(plan_), signed=signed)


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


# ---- plan binding and signatures ---------------------------------------------


def test_an_approval_naming_the_plans_digest_passes_signed_or_not():
    bound = approval(plan_digest=plan_digest(plan()))
    check(plan(), bound)
    check(plan(), bound, signed=True)


def test_an_approval_of_another_plan_of_the_same_module_and_sha_is_a_mismatch():
    # The attack: same module, same SHA, another change list (or another module's plan).
    other = plan(changes=[change(action="restart")])
    with pytest.raises(ApprovalMismatch, match="approves another plan"):
        check(plan(), approval(plan_digest=plan_digest(other)))
    with pytest.raises(ApprovalMismatch, match="approves another plan"):
        check(plan(module="postgres"), approval(plan_digest=plan_digest(plan())))


def test_without_a_key_an_approval_may_omit_the_digest_with_a_key_it_may_not():
    check(plan(), approval())
    with pytest.raises(ApprovalMismatch, match="predates plan binding"):
        check(plan(), approval(), signed=True)
    # Compose up re-checks the binding: one scheduled before the digest was sent has none.
    with pytest.raises(ApprovalMismatch, match="approves another plan"):
        check_binding(Approval.model_validate(approval(plan_digest="ab" * 32)), None, signed=True)


def _signed(**over) -> Approval:
    given = Approval.model_validate(approval(plan_digest=plan_digest(plan()), **over))
    return given.model_copy(update={"signature": sign(KEY, "honcho-redis", given)})


def test_the_signature_covers_the_plan_digest():
    good = _signed()
    check_signature(KEY, "honcho-redis", good, NOW)
    moved = good.model_copy(update={"plan_digest": plan_digest(plan(module="postgres"))})
    with pytest.raises(ApprovalMismatch, match="signature does not match"):
        check_signature(KEY, "honcho-redis", moved, NOW)


def test_approved_by_is_signed_as_given_not_as_redacted():
    # Both redact to the same text; each signature covers its own name.
    first, second = _signed(approved_by="ci token=aaaaaaaaaaaa"), _signed(approved_by="ci token=bbbbbbbbbbbb")
    assert first.approved_by == "ci token=aaaaaaaaaaaa"
    assert first.signature != second.signature
    with pytest.raises(ApprovalMismatch, match="signature does not match"):
        check_signature(KEY, "honcho-redis", first.model_copy(update={"approved_by": second.approved_by}), NOW)
