"""Determinism: histories of real applies replay against today's workflow code.

Fresh histories (applied, unhealthy with rollback, approved by signal) catch
non-determinism inside the code as it is now. `histories/vN/` holds the set
(in flight and finished) of the previous version, recorded right before the
workflow change that made this one (tests/workflows/test_record_histories.py):
what a new worker must replay when it takes over. Older sets leave with the
branches they needed (docs/upgrade.md).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from platformctl.client import DATA_CONVERTER
from platformctl.transport import ConnectFailed
from platformctl.transport.fake import ps
from tests.platform_files import apply_input, approval
from workflows.health_check import HEALTH_MISSED_POLL_PATCH
from workflows.registry import ALL_WORKFLOWS

PREVIOUS = Path(__file__).parent / "histories" / "v19"  # the version before this one
RECORDED = PREVIOUS / "applied.json"


async def replay(history: WorkflowHistory, workflows: list = ALL_WORKFLOWS) -> Exception | None:
    replayer = Replayer(workflows=workflows, data_converter=DATA_CONVERTER)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    return result.replay_failure


async def wait_until_awaiting_approval(handle) -> None:
    for _ in range(200):
        if (await handle.query("status"))["phase"] == "awaiting_approval":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the apply never started waiting for approval")


def activity_types(history: WorkflowHistory) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


async def test_applied_history_replays(harness):
    out = await harness.apply(apply_input())
    assert out.status == "applied"
    history = await out.handle.fetch_history()
    assert await replay(history) is None


async def test_unhealthy_history_with_rollback_replays(harness):
    harness.transport.script = {"compose_ps": [ps("honcho-redis", "running", "unhealthy")]}
    out = await harness.apply(apply_input())
    assert out.status == "unhealthy" and out.result["rollback"] is not None
    history = await out.handle.fetch_history()
    assert "rollback" in activity_types(history)
    assert await replay(history) is None


async def test_history_with_a_missed_health_poll_replays(harness):
    unreachable = ConnectFailed("rs2000: connection refused")
    harness.transport.script = {"compose_ps": [*[unreachable] * 4, ps("honcho-redis")]}  # a poll's 4 attempts
    out = await harness.apply(apply_input())
    assert out.status == "applied"
    history = await out.handle.fetch_history()
    markers = [e.marker_recorded_event_attributes.SerializeToString() for e in history.events
               if e.HasField("marker_recorded_event_attributes")]
    assert any(HEALTH_MISSED_POLL_PATCH.encode() in m for m in markers)
    assert await replay(history) is None


async def test_history_that_waited_for_an_approve_signal_replays(harness):
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        await wait_until_awaiting_approval(handle)
        await handle.signal("approve", approval())
        out = await harness.outcome(handle)
    assert out.status == "applied"
    history = await out.handle.fetch_history()
    assert any(e.HasField("workflow_execution_signaled_event_attributes") for e in history.events)
    assert await replay(history) is None


def recorded_history() -> WorkflowHistory:
    return WorkflowHistory.from_json("apply-recorded", RECORDED.read_text())


def test_recorded_history_is_a_complete_successful_apply():
    history = recorded_history()
    assert history.events[-1].HasField("workflow_execution_completed_event_attributes")
    # The checks and records run as local activities: markers, not scheduled activities.
    assert activity_types(history)[:3] == ["verify_checkout", "compose_images", "compose_up"]
    assert activity_types(history)[-1] == "release_lease"


async def test_recorded_history_replays_against_current_code():
    assert await replay(recorded_history()) is None


PREVIOUS_SET = sorted(PREVIOUS.glob("*.json"))


def test_the_previous_versions_set_has_every_workflow_in_flight_and_finished():
    assert sorted(p.parent for p in PREVIOUS.parent.glob("*/*.json")) == [PREVIOUS] * len(PREVIOUS_SET)
    assert {p.stem for p in PREVIOUS_SET} == {
        "awaiting_approval", "waiting_for_lock", "mid_health_check", "applied", "unhealthy_rolled_back",
        "operator_rolled_back", "operator_rollback_mid_health_check", "reapply",
    }


@pytest.mark.parametrize("path", PREVIOUS_SET, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_recorded_in_flight_history_replays_against_current_code(path):
    """Applies that were running (or done) when a new worker took over."""
    assert await replay(WorkflowHistory.from_json(path.stem, path.read_text())) is None


@workflow.defn(name="ApplyWorkflow", sandboxed=False)
class _ReorderedApplyWorkflow:
    """A stand-in for a careless change: a timer where the history has an activity."""

    @workflow.run
    async def run(self, request: Any = None) -> None:
        await workflow.sleep(timedelta(seconds=1))


async def test_recorded_history_rejects_an_incompatible_change():
    failure = await replay(recorded_history(), workflows=[_ReorderedApplyWorkflow])
    assert isinstance(failure, workflow.NondeterminismError), failure
