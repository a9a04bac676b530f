"""Records histories of applies for the replay tests (run by hand, before a workflow change).

    RECORD_HISTORIES=<set> .venv/bin/python -m pytest tests/workflows/test_record_histories.py -q

writes `histories/<set>/<name>.json`: an apply awaiting approval, one waiting
for the lock, one in the middle of its health check (each cut where it
stands, so a worker upgrade must pick it up from there), and finished ones
(applied, unhealthy with its rollback; recorded first, as the time-skipping
server stalls after the in-flight ones), a finished re-apply, and an operator
rollback finished and one in its health check (on a real dev server). `test_replay.py` replays every set.
The files at the top of `histories/` are the first set, recorded before the
project lock, phase statuses and notifications.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import pytest

from platformctl.transport.fake import ps
from tests.conftest import Harness
from tests.platform_files import SHA, apply_input, module_doc, plan, write_platform
from tests.workflows.conftest import FAST_HEALTH
from tests.workflows.test_operator_rollback import REQUEST, rollback, two_applies

HISTORIES = Path(__file__).parent / "histories"
SET = os.environ.get("RECORD_HISTORIES", "")

pytestmark = pytest.mark.skipif(not SET or SET == "1", reason="records histories by hand: RECORD_HISTORIES=<set name>")


async def _phase(handle, phase: str) -> None:
    for _ in range(400):
        if (await handle.query("status"))["phase"] == phase:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {phase!r}")


async def _save(handle, name: str) -> None:
    history = await handle.fetch_history()
    folder = HISTORIES / SET
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")


async def test_record_finished_histories(harness):
    out = await harness.apply(apply_input())
    assert out.status == "applied"
    await _save(out.handle, "applied")

    harness.transport.script = {"compose_ps": [ps("honcho-redis", "running", "unhealthy")]}
    out = await harness.apply(apply_input())
    assert out.status == "unhealthy"
    await _save(out.handle, "unhealthy_rolled_back")


async def test_record_in_flight_histories(harness):
    harness.transport.script = {"compose_ps": [ps("honcho-redis", "running", "starting")]}
    async with harness.worker():
        waiting = await harness.start(apply_input(approval_=None), workflow_id="recorded-awaiting-approval")
        await _phase(waiting, "awaiting_approval")
        await _save(waiting, "awaiting_approval")

        holder = await harness.start(apply_input(), workflow_id="recorded-mid-health-check")
        await _phase(holder, "health_check")
        await asyncio.sleep(0.5)  # at least one compose ps observed
        await _save(holder, "mid_health_check")

        queued = await harness.start(apply_input(), workflow_id="recorded-waiting-for-lock")
        for _ in range(100):
            history = await queued.fetch_history()
            if any(e.HasField("start_child_workflow_execution_failed_event_attributes") for e in history.events):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the second apply never found the lock taken")
        await asyncio.sleep(0.3)
        await _save(queued, "waiting_for_lock")
        for h in (waiting, holder, queued):
            await h.terminate("recorded")


@pytest.fixture
def dev_harness(dev_env, tmp_path) -> Harness:
    """On a real dev server: re-apply signals module state (see tests/workflows/conftest.py)."""
    return Harness(client=dev_env.client, root=tmp_path)


async def test_record_reapply_history(dev_harness):
    """Three modules of one compose project (one lane) and one of another, re-applied."""
    modules = [f"m-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    docs = [module_doc(m, compose_service="honcho-redis", health=FAST_HEALTH) for m in modules[:3]]
    docs.append(module_doc(modules[3], compose_service="honcho-redis", health=FAST_HEALTH,
                           compose_file="compose/other/compose.yaml"))
    write_platform(dev_harness.root, modules=docs)
    async with dev_harness.worker():
        for m in modules:
            out = await dev_harness.outcome(await dev_harness.start(apply_input(plan(module=m))))
            assert out.status == "applied", out
        handle = await dev_harness.client.start_workflow(
            "ReapplyWorkflow", {"modules": modules, "max_parallel": 2}, id=f"reapply-{uuid.uuid4()}",
            task_queue=dev_harness.task_queue,
        )
        await handle.result()
    await _save(handle, "reapply")


async def test_record_operator_rollback_histories(dev_harness):
    write_platform(dev_harness.root, modules=[module_doc(health=FAST_HEALTH)])
    async with dev_harness.worker():
        await two_applies(dev_harness)
        wid = f"recorded-operator-rollback-{uuid.uuid4()}"
        status, _, _ = await rollback(dev_harness, REQUEST, wid)
        assert status == "rolled_back"
        await _save(dev_harness.client.get_workflow_handle(wid), "operator_rolled_back")

        # The module is on the older images now: back on the newer ones, so there is
        # something to roll back to, then one that stays in its health check.
        dev_harness.transport.head = SHA
        await two_applies(dev_harness)
        dev_harness.transport.script["compose_ps"] = [ps("honcho-redis", "running", "starting")]
        handle = await dev_harness.client.start_workflow(
            "RollbackWorkflow", REQUEST, id=f"recorded-rollback-mid-health-{uuid.uuid4()}",
            task_queue=dev_harness.task_queue,
        )
        await _phase(handle, "health_check")
        await asyncio.sleep(0.5)  # at least one compose ps observed
        await _save(handle, "operator_rollback_mid_health_check")
        await handle.terminate("recorded")
