"""persist_state: the applied path writes the status file and an audit line; every other outcome an audit line,
and a failure before compose up the status file's latest outcome."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace

import pytest

from activities import records as records_module
from activities.records import Records
from platformctl import state as state_module
from platformctl.models import Approval, PersistedState, Plan, RollbackRecord
from platformctl.policy.record_seal import seal
from platformctl.state import read_status
from tests.activities.state_helpers import (
    COMMAND,
    DIGEST,
    SHA,
    StubDeps,
    failure_of,
    files_under,
    persist_input,
    result,
    run,
    settings_for,
)


def activity(settings):
    return Records(StubDeps(settings)).persist_state  # type: ignore[arg-type]


def audit(settings) -> list[dict]:
    return [json.loads(x) for x in (settings.state_dir / "audit.jsonl").read_text().splitlines()]


async def test_applied_records_who_what_and_whether_the_checkout_was_verified(settings):
    out = await run(activity(settings), persist_input())
    assert out.state_artifact == ".platform/state/modules/honcho-redis.status.json"
    status = read_status(settings.state_dir, "honcho-redis")
    assert (status.last_apply_sha, status.last_apply_pr, status.plan_digest) == (SHA, 165, DIGEST)
    assert (status.workflow_id, status.run_id, status.command) == ("apply-1", "run-1", COMMAND)
    assert (status.approved_by, status.checkout_verified, status.status) == ("alice", False, "applied")
    assert status.last_failure is None and status.applied_at
    [line] = audit(settings)
    assert line["approved_by"] == "alice" and line["checkout_verified"] is False
    assert (line["status"], line["exitCode"], line["source_sha"], line["run_id"]) == ("applied", 9, SHA, "run-1")
    assert line["at"] == status.applied_at


@pytest.mark.parametrize(
    "status, module",
    [
        ("rejected", "honcho-redis"),
        ("cancelled", "honcho-redis"),
        ("unhealthy", "honcho-redis"),
        ("some_future_status", "honcho-redis"),
        # A blocked input whose module id was garbage still gets its line, the module as given.
        ("blocked", "../../escaped"),
        ("blocked", "a/../../escaped"),
        ("blocked", ".."),
        ("blocked", "/tmp/escaped"),
        ("blocked", None),
    ],
)
async def test_other_outcomes_write_one_audit_line_and_no_status_file(tmp_path, settings, status, module):
    rollback = RollbackRecord(reason="unhealthy", last_good_sha=SHA, state_artifact=None)
    inp = persist_input(result(status, module=module, rollback=rollback), approved_by=None, rejected_by="carol")
    out = await run(activity(settings), inp)
    assert out.state_artifact is None
    assert files_under(tmp_path) == {".platform/state/audit.jsonl"}
    [line] = audit(settings)
    assert (line["status"], line["module"], line["rejected_by"], line["approved_by"]) == (status, module, "carol", None)
    assert line["rollback"] == {
        "reason": "unhealthy", "last_good_sha": SHA, "state_artifact": None, "action": "record", "image": None
    }


@pytest.mark.parametrize("status", ["rejected", "cancelled", "approval_expired", "blocked", "tool_error"])
async def test_a_failure_before_compose_up_is_the_status_files_latest_outcome(settings, status):
    await run(activity(settings), persist_input())
    inp = persist_input(result(status), workflow_id="apply-2", run_id="run-2", approved_by=None, rejected_by="carol")
    out = await run(activity(settings), inp)
    assert out.state_artifact is None
    state = read_status(settings.state_dir, "honcho-redis")
    assert (state.status, state.workflow_id, state.last_apply_sha) == (status, "apply-1", SHA)  # the last good apply
    failure = state.last_failure
    assert (failure.status, failure.workflow_id, failure.run_id, failure.rollback) == (status, "apply-2", "run-2", None)
    assert failure.error == f"{status}: pull access denied"
    assert [line["status"] for line in audit(settings)] == ["applied", status]


@pytest.mark.parametrize(
    "res",
    [
        result("blocked", host=None),  # its plan never validated: the module may not exist
        result("dry_run", exitCode=0, error=None),
        result("no_changes", exitCode=0, error=None),
    ],
    ids=["blocked-before-validation", "dry_run", "no_changes"],
)
async def test_outcomes_that_change_nothing_or_name_no_known_module_leave_the_status_file(tmp_path, settings, res):
    await run(activity(settings), persist_input(res))
    assert files_under(tmp_path) == {".platform/state/audit.jsonl"}


async def test_a_status_file_that_cannot_be_read_still_lets_a_failure_be_audited(settings, caplog):
    path = settings.state_dir / "modules" / "honcho-redis.status.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    await run(activity(settings), persist_input(result("rejected")))
    assert [line["status"] for line in audit(settings)] == ["rejected"]
    assert path.read_text() == "{not json"
    assert any("status file of honcho-redis not updated for rejected" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("res", "label"), [(result("blocked", host=None, module="made-up"), None),
                                             (result("blocked"), "honcho-redis")], ids=["unvalidated", "validated"])
async def test_outcome_metrics_name_a_module_only_once_its_plan_validated(settings, monkeypatch, res, label):
    counted: list[tuple[str, str | None]] = []
    monkeypatch.setattr(records_module, "record_outcome", lambda status, module, d: counted.append((status, module)))
    await run(activity(settings), persist_input(res))
    assert counted == [("blocked", label)]


@pytest.mark.parametrize("module", ["../../escaped", "modules/../../escaped", "Redis"])
async def test_an_applied_input_with_a_bad_module_id_writes_nothing(tmp_path, settings, module):
    failure = await failure_of(activity(settings), persist_input(result(module=module)))
    assert (failure.type, failure.non_retryable) == ("PolicyViolation", True)
    assert files_under(tmp_path) == set()


async def test_state_that_cannot_be_written_after_compose_up_says_the_service_is_live(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # the state dir lies under a plain file: nothing can be created there
    settings = settings_for(tmp_path, state_dir=blocker / "state")
    failure = await failure_of(activity(settings), persist_input())
    assert failure.type == "ToolError"
    assert failure.message.startswith(
        "compose up succeeded and the service is healthy on rs2000, but its state could not be recorded: "
    )
    assert f"the host runs {SHA}, the status file does not say so" in failure.message
    assert "Not a directory" in failure.message


async def test_an_audit_line_that_cannot_be_written_after_compose_up_says_so(settings, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(state_module.os, "write", lambda fd, data: real_write(fd, data[:3]))
    failure = await failure_of(activity(settings), persist_input())
    assert failure.type == "ToolError"
    assert "compose up succeeded and the service is healthy on rs2000" in failure.message
    assert "short write" in failure.message and "audit.jsonl has no line for it" in failure.message
    assert read_status(settings.state_dir, "honcho-redis").last_apply_sha == SHA
    assert (settings.state_dir / "audit.jsonl").read_bytes() == b""


ROLLED_BACK = RollbackRecord(reason="unhealthy", last_good_sha=SHA, state_artifact=None)


class Reports:
    """What persist_state tells the world about an outcome: log line, metric, notification, module state."""

    def __init__(self, monkeypatch, caplog) -> None:
        self.counted: list[str] = []
        self.notified: list[str] = []
        self.caplog = caplog
        caplog.set_level(logging.INFO, logger="platform.apply")
        monkeypatch.setattr(records_module, "record_outcome", lambda status, module, d: self.counted.append(status))

        async def send(notification) -> bool:
            self.notified.append(notification.status)
            return True

        monkeypatch.setattr(records_module, "send", send)

    def logged(self) -> list[str]:
        return [r.getMessage() for r in self.caplog.records if r.getMessage().startswith("apply ")]


def told(res=None, **over):
    """An input whose outcome goes to the module's state workflow too (an applied one needs its plan and approval)."""
    plan = Plan(module="honcho-redis", source_sha=SHA, changes=[])
    return persist_input(res, plan=plan, approval=Approval(approved_sha=SHA, approved_pr=165), **over)


async def run_on_new_worker(settings, inp) -> tuple[PersistedState, StubDeps]:
    # A crash re-runs a local activity from scratch on the next worker: new deps, same input.
    deps = StubDeps(settings)
    return await run(Records(deps).persist_state, inp), deps  # type: ignore[arg-type]


@pytest.mark.parametrize("status", ["applied", "unhealthy", "blocked"])
async def test_a_rerun_for_the_same_run_writes_and_reports_nothing_again(settings, monkeypatch, caplog, status):
    reports = Reports(monkeypatch, caplog)
    inp = told(result(status, rollback=ROLLED_BACK if status == "unhealthy" else None))
    first, first_deps = await run_on_new_worker(settings, inp)
    on_disk = files_under(settings.state_dir)
    status_before = {p: (settings.state_dir / p).read_bytes() for p in on_disk if p.startswith("modules/")}

    again, deps = await run_on_new_worker(settings, inp)

    assert again == first
    assert [line["status"] for line in audit(settings)] == [status]
    assert {p: (settings.state_dir / p).read_bytes() for p in on_disk if p.startswith("modules/")} == status_before
    assert deps.client.started == []  # the module's state workflow is not told twice
    assert len(first_deps.client.started) == (0 if status == "blocked" else 1)
    assert len(reports.logged()) == 1 and reports.counted == [status]
    assert reports.notified == ([status] if status == "unhealthy" else [])


@pytest.mark.parametrize(
    "other",
    [{"run_id": "run-2"}, {"workflow_id": "apply-2"}, {"res": result("tool_error", rollback=ROLLED_BACK)}],
    ids=["another run of the workflow id", "another workflow", "another outcome of the run"],
)
async def test_another_run_or_outcome_is_recorded_and_reported(settings, monkeypatch, caplog, other):
    reports = Reports(monkeypatch, caplog)
    await run_on_new_worker(settings, told())
    _, deps = await run_on_new_worker(settings, told(**other))
    lines = audit(settings)
    assert len(lines) == 2 and lines[0] != lines[1]
    assert len(reports.logged()) == 2 and len(reports.counted) == 2 and len(deps.client.started) == 1


async def test_a_line_written_by_a_concurrent_run_after_the_first_look_is_not_written_or_reported_again(
    settings, monkeypatch, caplog
):
    # A frozen worker thawed while the next one re-runs the activity: both pass the first look,
    # the audit lock lets only one write and report.
    reports = Reports(monkeypatch, caplog)
    inp = persist_input(result("remote_failed"))
    await run_on_new_worker(settings, inp)
    monkeypatch.setattr(records_module, "audit_has", lambda state_dir, line: False)
    await run_on_new_worker(settings, inp)
    assert [line["status"] for line in audit(settings)] == ["remote_failed"]
    assert len(reports.logged()) == 1 and reports.notified == ["remote_failed"]


@pytest.mark.parametrize("key", [b"k" * 32, b"short"], ids=["key", "unusable-key"])
async def test_a_success_is_sealed_with_the_signing_key_and_recorded_unsealed_when_it_cannot_be_read(
    tmp_path, key, caplog
):
    (tmp_path / "approval.key").write_bytes(key)
    settings = replace(settings_for(tmp_path), approval_key_file=tmp_path / "approval.key")
    act = Records(StubDeps(settings))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        await run(act.persist_state, told(result()))
    [(_, kwargs)] = act.deps.client.started  # type: ignore[attr-defined]
    [event] = kwargs["start_signal_args"]
    if len(key) >= 16:
        assert event.applied.seal == seal(key, "honcho-redis", event.applied)
    else:
        # The host runs it: the apply stays applied; only an operator's rollback to it is refused.
        assert event.applied.seal is None and "the state record is not sealed" in caplog.text
        assert read_status(settings.state_dir, "honcho-redis").status == "applied"
