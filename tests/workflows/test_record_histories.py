"""Records histories of in-flight applies for the replay tests (run by hand).

    RECORD_HISTORIES=1 .venv/bin/python -m pytest tests/workflows/test_record_histories.py -q

writes `histories/<name>.json`: an apply awaiting approval, one waiting for
the lock, one in the middle of its health check. Each is cut where it stands,
so the replay tests check that a worker upgrade can pick it up from there.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from platformctl.transport.fake import ps
from tests.platform_files import apply_input

HISTORIES = Path(__file__).parent / "histories"

pytestmark = pytest.mark.skipif(os.environ.get("RECORD_HISTORIES") != "1", reason="records histories by hand")


async def _phase(handle, phase: str) -> None:
    for _ in range(400):
        if (await handle.query("status"))["phase"] == phase:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {phase!r}")


async def _save(handle, name: str) -> None:
    history = await handle.fetch_history()
    (HISTORIES / f"{name}.json").write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")


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
