"""persist_state: the applied path writes the status file and an audit line; every other outcome an audit line."""

from __future__ import annotations

import json
import os

import pytest

from activities.persist_state import PersistState
from platformctl import state as state_module
from platformctl.models import RollbackRecord
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
    return PersistState(StubDeps(settings)).persist_state  # type: ignore[arg-type]


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
