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


@pytest.mark.parametrize("status", ["applied", "blocked"])
async def test_a_full_state_disk_keeps_the_outcome_and_loses_no_audit_line(harness, status):
    state_dir = harness.settings.state_dir
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    state_dir.write_text("not a directory: every record in it fails, as on a full disk\n")
    request = apply_input() if status == "applied" else apply_input(plan(module="no-such-module"))
    async with harness.worker():
        handle = await harness.start(request)
        reason = await pending(handle)
        # The release is healthy on the host: no rollback ran, and the lock is free meanwhile.
        assert harness.transport.commands("compose_rollback") == []
        state_dir.unlink()
        state_dir.mkdir()
        out = await harness.outcome(handle)
        history = await handle.fetch_history()
    assert "state" in reason or "directory" in reason, reason
    assert out.status == status
    assert [line["status"] for line in audit_lines(harness)] == [status]
    if status == "applied":
        assert read_status(state_dir, "honcho-redis").status == "applied"
        assert out.result["state_artifact"] == ".platform/state/modules/honcho-redis.status.json"
        assert len(harness.transport.commands("compose_up")) == 1 and out.result["error"] is None
    assert await replay(history) is None
