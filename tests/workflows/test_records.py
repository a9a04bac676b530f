"""An outcome stands when its records cannot be written, and they are written once they can
(a dev server: the retries wait on real durable timers, the first after 5 s)."""

from __future__ import annotations

import asyncio

import pytest

from platformctl.state import read_status
from tests.conftest import Harness
from tests.platform_files import apply_input, module_doc, plan, write_platform
from tests.workflows.conftest import FAST_HEALTH
from tests.workflows.test_apply import audit_lines
from tests.workflows.test_replay import replay


@pytest.fixture
def harness(dev_env, tmp_path) -> Harness:
    write_platform(tmp_path, modules=[module_doc(health=FAST_HEALTH)])
    return Harness(client=dev_env.client, root=tmp_path)


async def pending(handle) -> str:
    for _ in range(300):
        status = await handle.query("status")
        if status["record_pending"]:
            return status["record_pending"]
        await asyncio.sleep(0.1)
    raise AssertionError(f"the record never went pending: {status}")


async def test_a_full_state_disk_keeps_each_outcome_and_loses_no_audit_line(harness):
    state_dir = harness.settings.state_dir
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    state_dir.write_text("not a directory: every record in it fails, as on a full disk\n")
    async with harness.worker():
        # A healthy release, and an apply refused before any host (its audit line all it leaves).
        applied = await harness.start(apply_input())
        blocked = await harness.start(apply_input(plan(module="no-such-module")))
        reasons = [await pending(applied), await pending(blocked)]
        # The release is healthy on the host: no rollback ran, and the lock is free meanwhile.
        assert harness.transport.commands("compose_rollback") == []
        state_dir.unlink()
        state_dir.mkdir()
        outcomes = [await harness.outcome(applied), await harness.outcome(blocked)]
        histories = [await applied.fetch_history(), await blocked.fetch_history()]
    assert all("state" in reason or "directory" in reason for reason in reasons), reasons
    assert [o.status for o in outcomes] == ["applied", "blocked"]
    assert sorted(line["status"] for line in audit_lines(harness)) == ["applied", "blocked"]
    assert read_status(state_dir, "honcho-redis").status == "applied"
    assert outcomes[0].result["state_artifact"] == ".platform/state/modules/honcho-redis.status.json"
    assert len(harness.transport.commands("compose_up")) == 1 and outcomes[0].result["error"] is None
    assert [await replay(history) for history in histories] == [None, None]
