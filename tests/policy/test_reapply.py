"""What re-apply reads as drift, and which modules it leaves alone (pure)."""

from __future__ import annotations

from platformctl.models import AppliedRecord, ModuleState, PinRecord, Plan, ReapplyCandidate
from platformctl.policy.plan import plan_digest
from platformctl.policy.reapply import drifted, skip_reason
from tests.platform_files import SHA, approval, plan

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64
QUIET = {"remote": {"stderr": " Container core-x-1  Running\n"}}


def snapshot(*ids: str) -> dict:
    return {"images": [{"container": "core-x-1", "repository": "local/x", "tag": "1", "image_id": i} for i in ids]}


def test_another_image_after_the_apply_is_drift_even_when_compose_printed_nothing_changed():
    assert drifted({**QUIET, "snapshot": snapshot(OLD), "images": snapshot(NEW)})
    assert not drifted({**QUIET, "snapshot": snapshot(OLD), "images": snapshot(OLD)})


def test_without_snapshots_compose_output_decides():
    assert not drifted(QUIET)
    assert drifted({"remote": {"stderr": " Container core-x-1  Recreated\n"}})
    assert drifted({"snapshot": snapshot(OLD), "images": None, "remote": {"stderr": " Container core-x-1  Started\n"}})


def candidate_for(plan_module: str, *, bound: bool = True) -> ReapplyCandidate:
    raw = plan(module=plan_module)
    digest = plan_digest(raw)
    applied = AppliedRecord(
        sha=SHA, pr=165, approved_by="ci", plan=Plan.model_validate(raw), plan_raw=raw if bound else None,
        approval=approval(plan_digest=digest if bound else None), plan_digest=digest, workflow_id="apply-x",
        host="rs2000", compose_service="x", at="2026-11-27T00:00:00+00:00",
    )
    state = ModuleState(module="x", last_applied=applied)
    return ReapplyCandidate(module="x", state=state, host="rs2000", verify_checkout=True)


def test_a_module_pinned_by_an_operators_rollback_is_skipped():
    candidate = candidate_for("x")
    state = candidate.state
    assert state is not None and skip_reason(candidate) is None
    pin = PinRecord(sha=SHA, images=[], by="alice", reason="bad release", workflow_id="rollback-x-1", at="now")
    pinned = candidate.model_copy(update={"state": state.model_copy(update={"pinned": pin})})
    assert "pinned by the rollback rollback-x-1 (alice: bad release)" in (skip_reason(pinned) or "")


def test_a_recorded_plan_for_another_module_is_skipped():
    # Only a forged record holds one: its apply would go to that module's host, which may not verify its checkout.
    reason = skip_reason(candidate_for("honcho-redis"))
    assert reason == "the recorded apply is a plan for module 'honcho-redis', not this one"


def test_an_approval_recorded_before_plan_binding_is_skipped_never_sent_in_the_old_form():
    old = candidate_for("x", bound=False)
    assert skip_reason(old) == "approval predates plan binding: approve once more"
