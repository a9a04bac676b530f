"""rollback: the status file keeps the last good apply whole and adds the failure."""

from __future__ import annotations

import logging

import pytest

from activities.persist_state import PersistState
from activities.rollback import Rollback
from platformctl.state import read_status
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
)


def rollback(settings):
    return Rollback(StubDeps(settings)).rollback  # type: ignore[arg-type]


async def test_rollback_keeps_every_field_of_the_last_good_apply(settings):
    await run(PersistState(StubDeps(settings)).persist_state, persist_input())  # type: ignore[arg-type]
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
