"""rollback: the status file keeps the last good apply whole and adds the failure."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import records as records_module
from activities.records import Records
from activities.remote_steps import RemoteSteps
from platformctl.models import RecordRollbackInput, RollbackImagesInput, RollbackOutcome, RollbackRequest
from platformctl.state import read_status
from platformctl.target import derive_target
from platformctl.transport.fake import FakeTransport
from tests.activities.state_helpers import (
    COMMAND,
    DIGEST,
    OTHER_SHA,
    SHA,
    StubDeps,
    failure_of,
    files_under,
    persist_input,
    result,
    rollback_input,
    run,
    settings_for,
)
from tests.platform_files import write_platform


def status_file(settings):
    return settings.state_dir / "modules" / "honcho-redis.status.json"


def rollback(settings):
    return Records(StubDeps(settings)).rollback  # type: ignore[arg-type]


async def test_rollback_keeps_every_field_of_the_last_good_apply(settings):
    await run(Records(StubDeps(settings)).persist_state, persist_input())  # type: ignore[arg-type]
    good = read_status(settings.state_dir, "honcho-redis")

    out = await run(rollback(settings), rollback_input())

    assert (out.last_good_sha, out.state_artifact) == (SHA, ".platform/state/modules/honcho-redis.status.json")
    status = read_status(settings.state_dir, "honcho-redis")
    assert status.status == "remote_failed"
    kept = ["last_apply_sha", "last_apply_pr", "plan_digest", "applied_at", "workflow_id", "run_id",
            "command", "approved_by", "checkout_verified", "host", "compose_service"]
    assert {k: getattr(status, k) for k in kept} == {k: getattr(good, k) for k in kept}
    assert (status.run_id, status.command, status.approved_by) == ("run-1", COMMAND, "alice")
    failure = status.last_failure
    assert (failure.status, failure.source_sha, failure.workflow_id, failure.run_id) == (
        "remote_failed", OTHER_SHA, "apply-2", "run-2",
    )
    assert (failure.approved_by, failure.approved_pr, failure.error) == (
        "bob", 170, "remote_failed: pull access denied"
    )
    assert failure.plan_digest != DIGEST and failure.at


async def test_a_first_apply_that_fails_records_no_last_good_apply(settings):
    out = await run(rollback(settings), rollback_input(result("unhealthy")))
    status = read_status(settings.state_dir, "honcho-redis")
    assert out.last_good_sha is None and status.last_apply_sha is None and status.run_id is None
    assert status.status == "unhealthy" and status.last_failure.run_id == "run-2"


@pytest.mark.parametrize("module", ["../../escaped", "a/b", "..", None])
async def test_rollback_never_writes_outside_the_state_dir_and_still_says_rollback(tmp_path, settings, caplog, module):
    caplog.set_level(logging.ERROR)
    failure = await failure_of(rollback(settings), rollback_input(result("remote_failed", module=module)))
    assert (failure.type, failure.non_retryable) == ("PolicyViolation", True)
    assert files_under(tmp_path) == set()
    [logged] = [r.getMessage() for r in caplog.records if "ROLLBACK" in r.getMessage()]
    assert "could not be recorded" in logged and f"sha={OTHER_SHA}" in logged


class Said:
    """The ROLLBACK log lines and notifications a rollback record sends."""

    def __init__(self, monkeypatch, caplog) -> None:
        self.notified: list[str] = []
        self.caplog = caplog
        caplog.set_level(logging.WARNING)

        async def send(notification) -> bool:
            self.notified.append(notification.event)
            return True

        monkeypatch.setattr(records_module, "send", send)

    def logged(self) -> list[str]:
        return [r.getMessage() for r in self.caplog.records if "ROLLBACK" in r.getMessage()]


async def test_a_rerun_for_the_same_run_writes_logs_and_notifies_nothing_again(settings, monkeypatch, caplog):
    said = Said(monkeypatch, caplog)
    await run(Records(StubDeps(settings)).persist_state, persist_input())  # type: ignore[arg-type]
    first = await run(rollback(settings), rollback_input())
    recorded = status_file(settings).read_bytes()

    again = await run(rollback(settings), rollback_input())  # a crash re-runs the local activity on the next worker

    assert again == first and again.last_good_sha == SHA
    assert status_file(settings).read_bytes() == recorded
    assert len(said.logged()) == 1 and said.notified == ["rollback"]


@pytest.mark.parametrize(
    "other",
    [{"run_id": "run-3"}, {"workflow_id": "apply-3"}, {"res": result("unhealthy")}, {"run_id": None}],
    ids=["another run of the workflow id", "another workflow", "another outcome", "no run id (an old input)"],
)
async def test_another_failure_is_recorded_and_said(settings, monkeypatch, caplog, other):
    said = Said(monkeypatch, caplog)
    res, ids = other.get("res"), {k: v for k, v in other.items() if k != "res"}
    await run(rollback(settings), rollback_input(**({"run_id": None} if "run_id" in ids else {})))
    await run(rollback(settings), rollback_input(res, **ids))
    failure = read_status(settings.state_dir, "honcho-redis").last_failure
    assert (failure.workflow_id, failure.run_id, failure.status) == (
        ids.get("workflow_id", "apply-2"), ids.get("run_id", "run-2"), res.status if res else "remote_failed"
    )
    assert len(said.logged()) == 2 and said.notified == ["rollback", "rollback"]


async def test_an_operator_rollback_recorded_again_by_a_rerun_is_said_once(settings, monkeypatch, caplog):
    sent: list[str] = []

    async def send(notification) -> bool:
        sent.append(notification.event)
        return True

    monkeypatch.setattr(records_module, "send", send)
    caplog.set_level(logging.INFO, logger="platform.apply")
    record = Records(StubDeps(settings)).record_rollback  # type: ignore[arg-type]
    inp = RecordRollbackInput(
        request=None, images=[], workflow_id="rollback-1", run_id="run-1",
        outcome=RollbackOutcome(status="unhealthy", exitCode=4, module="honcho-redis", error="still unhealthy"),
    )

    await run(record, inp)
    await run(record, inp)  # a crash re-runs the step on the next worker

    lines = (settings.state_dir / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["unhealthy"]
    assert len([r for r in caplog.records if r.getMessage().startswith("rollback honcho-redis")]) == 1
    assert sent == ["rollback_failed"]


def pin_attempt(n: int) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, attempt=n, activity_type="compose_rollback", workflow_id="rollback-1", workflow_run_id="run-1",
    )
    return env


async def test_an_operator_request_is_checked_by_the_pins_first_attempt_only(tmp_path):
    write_platform(tmp_path)
    settings = settings_for(tmp_path)
    transport = FakeTransport()
    pin = RemoteSteps(StubDeps(settings, transport)).compose_rollback  # type: ignore[arg-type]
    expired = RollbackRequest(module="honcho-redis", approved_by="alice", reason="bad release",
                              expires_at="2026-01-01T00:00:00Z").approval_of(SHA)
    inp = RollbackImagesInput(target=derive_target(settings, "honcho-redis"), module="honcho-redis",
                              image_id="sha256:" + "a" * 64, timeout_seconds=30, approval=expired)

    with pytest.raises(ApplicationError) as caught:
        await pin_attempt(1).run(pin, inp)
    assert (caught.value.type, transport.calls) == ("ApprovalMismatch", [])
    # The first attempt decided; a later one may find the pin half done by it (its worker
    # died) and finishes it instead of leaving the service there as approval_mismatch.
    out = await pin_attempt(2).run(pin, inp)
    assert out.executed and [c.kind for _, c in transport.calls] == ["compose_rollback"]
