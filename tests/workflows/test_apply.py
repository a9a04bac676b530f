"""ApplyWorkflow on the time-skipping test server with the fake transport.

One test per row of the contract's outcome table and per approval path.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest
from temporalio import workflow
from temporalio.client import WorkflowExecutionStatus

from platformctl.client import PLATFORM_KIND
from platformctl.models import LockRequest
from platformctl.policy.plan import plan_digest
from platformctl.state import read_status
from platformctl.transport import ConnectFailed, HostKeyMismatch
from platformctl.transport.fake import failed, hang, ok, ps, runless
from tests.platform_files import (
    OTHER_SHA,
    SHA,
    apply_input,
    approval,
    change,
    host_doc,
    module_doc,
    plan,
    write_platform,
)
from tests.workflows.test_replay import activity_types, replay
from workflows.health_check import HOST_UNOBSERVED
from workflows.project_lock import LOCK_FREE, ProjectLockWorkflow, project_lock_id
from workflows.registry import ALL_WORKFLOWS

COMMAND = f"platform-agent apply RUN 300 /opt/platform/compose/core/compose.yaml honcho-redis {SHA} --lease"
PS_COMMAND_V2 = "docker compose -f /opt/platform/compose/core/compose.yaml ps --all --format json honcho-redis"
PS_COMMAND = "platform-agent health RUN /opt/platform/compose/core/compose.yaml honcho-redis"
IMAGES_COMMAND = "docker compose -f /opt/platform/compose/core/compose.yaml images --format json honcho-redis"
GIT_HEAD = "git -C /opt/platform rev-parse HEAD"


def audit_lines(harness) -> list[dict]:
    path = harness.settings.state_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def wait_for_phase(handle, phase: str) -> None:
    for _ in range(200):
        if (await handle.query("status"))["phase"] == phase:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"workflow never reached phase {phase!r}")


async def test_applied_runs_exactly_the_contract_commands_and_persists(harness):
    harness.transport.script = {"compose_up": [ok(stderr="Container core-honcho-redis-1 Started")]}
    out = await harness.apply(apply_input())

    assert out.status == "applied" and out.result["exitCode"] == 9 and out.error_type is None
    assert runless(out.result["command"]) == COMMAND
    assert out.result["module"] == "honcho-redis" and out.result["host"] == "rs2000"
    assert out.result["remote"]["returncode"] == 0
    assert out.result["health"]["state"] == "running" and out.result["health"]["health"] == "healthy"
    assert 30 <= out.result["health"]["observed_s"] < 31
    assert out.result["rollback"] is None and out.result["error"] is None
    # compose up once, then ps until healthy for the 30 s window (polled every 5 s).
    assert harness.transport.commands("compose_up") == [COMMAND]
    assert set(harness.transport.commands("compose_ps")) == {PS_COMMAND}
    assert len(harness.transport.commands("compose_ps")) == 7
    assert out.result["state_artifact"] == ".platform/state/modules/honcho-redis.status.json"
    state = read_status(harness.settings.state_dir, "honcho-redis")
    assert state.last_apply_sha == SHA and state.last_apply_pr == 165 and state.status == "applied"
    assert state.workflow_id == out.handle.id and state.plan_digest == plan_digest(plan())
    assert state.host == "rs2000" and state.compose_service == "honcho-redis" and state.applied_at
    assert [a["status"] for a in audit_lines(harness)] == ["applied"]
    desc = await out.handle.describe()
    attrs = {k.name: v for k, v in desc.typed_search_attributes if k.name.startswith("Platform")}
    assert attrs == {"PlatformModule": "honcho-redis", "PlatformHost": "rs2000", "PlatformStatus": "applied"}


async def test_no_changes_touches_nothing(harness):
    out = await harness.apply(apply_input(plan(changes=[]), approval_=None))
    assert (out.status, out.result["exitCode"], out.error_type) == ("no_changes", 0, None)
    assert harness.transport.calls == []
    assert read_status(harness.settings.state_dir, "honcho-redis") is None
    assert [a["status"] for a in audit_lines(harness)] == ["no_changes"]


async def test_dry_run_when_phase_gate_closed(harness):
    harness.phase = ""
    out = await harness.apply(apply_input())
    assert (out.status, out.result["exitCode"], out.error_type) == ("dry_run", 0, None)
    # What would run on the host (the agent's `apply` runs exactly this).
    assert out.result["command"] == "docker compose -f /opt/platform/compose/core/compose.yaml up -d honcho-redis"
    assert harness.transport.calls == []
    assert read_status(harness.settings.state_dir, "honcho-redis") is None


@pytest.mark.parametrize("phase", ["5", "06", "true", "05 "])
async def test_phase_gate_opens_only_for_exactly_05(harness, phase):
    harness.phase = phase
    out = await harness.apply(apply_input())
    assert out.status == "dry_run" and harness.transport.calls == []


async def test_remote_failure_rolls_back_and_keeps_last_good_sha(harness):
    await harness.apply(apply_input(approval_=approval()))  # a good apply first
    harness.transport.calls.clear()
    harness.transport.script = {"compose_up": [failed(1, "Error response from daemon: pull access denied")]}
    harness.transport.head = OTHER_SHA
    out = await harness.apply(apply_input(plan(sha=OTHER_SHA), approval(sha=OTHER_SHA, pr=170)))

    assert (out.status, out.result["exitCode"], out.error_type) == ("remote_failed", 4, "RemoteFailed")
    assert out.result["remote"]["error_class"] == "image"
    assert out.result["error"] == "compose up exited with code 1 (image)"
    assert out.result["rollback"]["last_good_sha"] == SHA
    # The service went back to the image it ran before, and was watched until healthy.
    kinds = [c.kind for _, c in harness.transport.calls]
    # The checkout and the images are read side by side, both before compose up.
    assert sorted(kinds[:2]) == ["compose_images", "git_head"]
    assert kinds[2:5] == ["agent_check", "compose_up", "compose_rollback"]  # check: the lease outlasts a poll
    assert out.result["rollback"]["image"]["outcome"] == "restored"
    state = read_status(harness.settings.state_dir, "honcho-redis")
    assert state.last_apply_sha == SHA and state.status == "remote_failed"
    assert state.last_failure.source_sha == OTHER_SHA
    assert [a["status"] for a in audit_lines(harness)] == ["applied", "remote_failed"]


async def test_hung_compose_up_is_killed_at_its_timeout(harness):
    write_platform(harness.root, modules=[module_doc(up_timeout_seconds=1)])
    harness.transport.script = {"compose_up": [hang]}
    started = time.monotonic()
    out = await harness.apply(apply_input())
    assert (out.status, out.error_type) == ("remote_failed", "RemoteFailed")
    assert "still running after 1 seconds" in out.result["error"]
    assert out.result["rollback"] is not None
    assert time.monotonic() - started < 15


async def test_a_health_poll_that_cannot_reach_the_host_is_missed_not_a_verdict(harness):
    """A poll's four attempts all fail to connect: the stable window starts again and
    the apply ends applied once the host answers, with no rollback."""
    unreachable = ConnectFailed("rs2000: connection refused")
    healthy = ps("honcho-redis")
    harness.transport.script = {"compose_ps": [healthy, *[unreachable] * 4, healthy]}
    out = await harness.apply(apply_input())
    assert out.status == "applied", out.result
    assert out.result["rollback"] is None and harness.transport.commands("compose_rollback") == []
    # 1 poll, 4 missed attempts, then the whole stable window (30 s, every 5 s) again.
    assert len(harness.transport.commands("compose_ps")) == 1 + 4 + 7
    assert out.result["health"]["observed_s"] >= 30


async def test_a_host_unreachable_until_the_health_timeout_ends_remote_failed_without_a_rollback(harness):
    harness.transport.script = {"compose_ps": [ps("honcho-redis", "running", "starting"),
                                               ConnectFailed("rs2000: connection refused")]}
    out = await harness.apply(apply_input())
    assert (out.status, out.error_type) == ("remote_failed", "RemoteFailed"), out.result
    assert out.result["error"] == HOST_UNOBSERVED
    rollback = out.result["rollback"]
    assert (rollback["action"], rollback["image"]) == ("record", None), rollback
    assert harness.transport.commands("compose_rollback") == []
    assert out.result["health"]["health"] == "starting"  # the last thing seen


async def test_host_key_mismatch_is_not_retried(harness):
    harness.transport.script = {"compose_up": [HostKeyMismatch("rs2000: host key does not match the pinned key")]}
    out = await harness.apply(apply_input())
    assert (out.status, out.error_type) == ("remote_failed", "RemoteFailed")
    assert "pinned key" in out.result["error"]
    assert len(harness.transport.commands("compose_up")) == 1


async def test_unhealthy_service_fails_after_its_timeout_and_rolls_back(harness):
    harness.transport.script = {"compose_ps": [ps("honcho-redis", "running", "unhealthy")]}
    started = time.monotonic()
    out = await harness.apply(apply_input())
    assert (out.status, out.result["exitCode"], out.error_type) == ("unhealthy", 4, "Unhealthy")
    assert out.result["health"]["health"] == "unhealthy"
    assert out.result["rollback"]["reason"].startswith("service 'honcho-redis' did not stay healthy")
    # 180 s of polling every 5 s ran in skipped time.
    assert len(harness.transport.commands("compose_ps")) >= 36
    assert time.monotonic() - started < 30


async def test_remote_steps_get_the_workers_heartbeat_timeout(harness):
    harness.heartbeat_timeout_seconds = 7
    harness.transport.script = {"compose_ps": [ps("honcho-redis", "running", "unhealthy")]}
    out = await harness.apply(apply_input())
    assert out.status == "unhealthy", out.result  # after compose up and the rollback's pin
    scheduled = {
        e.activity_task_scheduled_event_attributes.activity_type.name:
            e.activity_task_scheduled_event_attributes.heartbeat_timeout.ToSeconds()
        for e in (await out.handle.fetch_history()).events
        if e.HasField("activity_task_scheduled_event_attributes")
    }
    assert scheduled["compose_up"] == scheduled["compose_rollback"] == 7, scheduled


async def test_exited_container_fails_without_waiting_out_the_timeout(harness):
    exited = ps("honcho-redis", "exited", "", exit_code=3)
    harness.transport.script = {"compose_ps": [ps("honcho-redis", "running", ""), exited]}
    out = await harness.apply(apply_input())
    assert out.status == "unhealthy" and out.result["health"]["state"] == "exited"
    assert out.result["health"]["exit_code"] == 3
    assert out.result["error"] == "service 'honcho-redis' stopped: state=exited, health=none, exit code 3"
    assert set(harness.transport.commands("compose_ps")) == {PS_COMMAND}
    # Two polls of the apply, one after the rollback (which sees the same exited container).
    assert len(harness.transport.commands("compose_ps")) == 3
    assert out.result["rollback"]["image"]["outcome"] == "unhealthy"


async def test_a_gate_from_before_health_and_ps_all_is_asked_as_it_allows(harness):
    refused = failed(126, "platform-gate: refused")
    harness.transport.script = {"compose_ps": [refused, refused, ps("honcho-redis")]}
    out = await harness.apply(apply_input())
    assert out.status == "applied", out.result
    polls = harness.transport.commands("compose_ps")
    assert polls[:3] == [PS_COMMAND, *(PS_COMMAND_V2.replace(" --all", x) for x in (" --all", ""))], polls


async def test_a_restart_during_the_stable_window_fails_the_apply(harness):
    """A crash-looping container without a healthcheck can look running at every poll."""
    harness.transport.script = {
        "compose_ps": [ps("honcho-redis", "running", "", restarts=n) for n in (1, 1, 2)],
    }
    out = await harness.apply(apply_input())
    assert out.status == "unhealthy", out.result
    assert out.result["error"] == "service 'honcho-redis' restarted during its stable window (restart count 1 -> 2)"


async def test_a_lease_lost_on_the_host_ends_the_apply_without_touching_the_project(harness):
    other = "0" * 8 + "-0000-4000-8000-" + "0" * 12
    lost = ok(json.dumps({"agent": 3, "verb": "health", "run": "RUN", "answer": "lease_lost", "holder": other}))
    harness.transport.script = {"compose_ps": [ps("honcho-redis"), lost]}
    out = await harness.apply(apply_input())
    assert (out.status, out.result["error"]) == ("remote_failed", f"lease lost to run {other}; no rollback")
    assert harness.transport.commands("compose_rollback") == []
    assert harness.transport.commands("agent_release") == ["platform-agent release RUN"]


async def test_every_apply_that_ran_compose_up_releases_its_lease_once(harness):
    out = await harness.apply(apply_input())
    assert out.status == "applied"
    harness.transport.script = {"compose_ps": [ps("honcho-redis", "running", "unhealthy")]}
    out = await harness.apply(apply_input())
    assert out.status == "unhealthy"
    assert harness.transport.commands("agent_release") == ["platform-agent release RUN"] * 2


async def test_health_flapping_restarts_the_stable_window(harness):
    healthy, starting = ps("honcho-redis"), ps("honcho-redis", "running", "starting")
    harness.transport.script = {"compose_ps": [starting, healthy, healthy, starting] + [healthy] * 10}
    out = await harness.apply(apply_input())
    assert out.status == "applied" and out.result["health"]["observed_s"] >= 30
    # 4 polls before the window restarts, then 7 polls for 30 s of stability.
    assert len(harness.transport.commands("compose_ps")) == 4 + 7


async def test_a_lease_taken_back_after_it_expired_restarts_the_stable_window(harness):
    """Nothing says the project stayed as it was while nobody held it."""
    healthy = ps("honcho-redis")
    retaken = ok(json.dumps({"agent": 3, "verb": "health", "run": "RUN", "answer": "observed", "lease": "retaken",
                             "containers": [{"state": "running", "health": "healthy"}]}))
    harness.transport.script = {"compose_ps": [healthy, healthy, healthy, retaken, healthy]}
    out = await harness.apply(apply_input())
    assert out.status == "applied" and out.result["health"]["observed_s"] >= 30
    # The window starts again at the 4th poll: 6 more polls for its 30 s.
    assert len(harness.transport.commands("compose_ps")) == 4 + 6


async def test_service_without_healthcheck_is_healthy_when_running(harness):
    harness.transport.script = {"compose_ps": [ps("honcho-redis", "running", "")]}
    out = await harness.apply(apply_input())
    assert out.status == "applied" and out.result["health"]["health"] == "none"


# ---- approval paths ----------------------------------------------------------


async def test_approval_by_signal(harness):
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        await wait_for_phase(handle, "awaiting_approval")
        assert harness.transport.calls == []
        await handle.signal("approve", approval())
        out = await harness.outcome(handle)
    assert out.status == "applied"
    assert read_status(harness.settings.state_dir, "honcho-redis").last_apply_pr == 165


async def test_signalled_approval_for_another_sha_is_a_mismatch(harness):
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        await wait_for_phase(handle, "awaiting_approval")
        await handle.signal("approve", approval(sha=OTHER_SHA))
        out = await harness.outcome(handle)
    assert (out.status, out.result["exitCode"], out.error_type) == ("approval_mismatch", 5, "ApprovalMismatch")
    assert harness.transport.calls == []


async def test_malformed_approve_signal_is_a_mismatch(harness):
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        await wait_for_phase(handle, "awaiting_approval")
        await handle.signal("approve", {"approved_pr": 3})
        out = await harness.outcome(handle)
    assert out.status == "approval_mismatch" and "approved_sha" in out.result["error"]
    assert harness.transport.calls == []


async def test_reject_signal(harness):
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        await wait_for_phase(handle, "awaiting_approval")
        await handle.signal("reject", {"reason": "not during the sale"})
        out = await harness.outcome(handle)
    assert (out.status, out.result["exitCode"], out.error_type) == ("rejected", 5, "ApplyRejected")
    assert "not during the sale" in out.result["error"]
    assert harness.transport.calls == []


async def test_approval_expires_in_skipped_time(harness):
    started = time.monotonic()
    out = await harness.apply(apply_input(approval_=None, approval_timeout_seconds=86400))
    assert (out.status, out.result["exitCode"], out.error_type) == ("approval_expired", 5, "ApprovalExpired")
    assert time.monotonic() - started < 20
    assert harness.transport.calls == []


@pytest.mark.parametrize(
    "given, status",
    [
        (approval(sha=OTHER_SHA), "approval_mismatch"),
        (approval(sha=SHA.upper()), "approval_mismatch"),
        (approval(pr=None), "approval_mismatch"),
        (approval(pr=0), "approval_mismatch"),
        (approval(pr=-3), "approval_mismatch"),
        (approval(pr=True), "approval_mismatch"),
        ({"approved_pr": 165}, "approval_mismatch"),
    ],
)
async def test_given_approval_must_match(harness, given, status):
    out = await harness.apply(apply_input(approval_=given))
    assert out.status == status and out.result["exitCode"] == 5
    assert harness.transport.calls == []


async def test_destructive_action_needs_allow_destructive(harness):
    request = apply_input(plan(changes=[change(action="recreate")]))
    out = await harness.apply(request)
    assert (out.status, out.result["exitCode"], out.error_type) == (
        "destructive_needs_approval", 6, "DestructiveNeedsApproval"
    )
    assert harness.transport.calls == []
    out = await harness.apply(apply_input(plan(changes=[change(action="recreate")]), approval(allow_destructive=True)))
    assert out.status == "applied"
    (up,) = [c for _, c in harness.transport.calls if c.kind == "compose_up"]
    assert up.argv[-3:] == ("--lease", "--action", "recreate")


@pytest.mark.parametrize("allow_destructive", [False, True])
async def test_a_remove_is_refused_before_anything_reaches_a_host(harness, allow_destructive):
    """Not honoured yet (compose up would leave the service running): blocked at step 1."""
    out = await harness.apply(apply_input(plan(changes=[change(action="remove")]),
                                          approval(allow_destructive=allow_destructive)))
    assert (out.status, out.error_type) == ("blocked", "PolicyViolation")
    assert "remove is not supported by this worker yet" in out.result["error"]
    assert harness.transport.calls == []


async def test_a_plan_mixing_actions_that_run_differently_is_blocked_before_any_host(harness):
    out = await harness.apply(apply_input(plan(changes=[change(action="update"), change(action="restart")])))
    assert (out.status, out.error_type) == ("blocked", "PolicyViolation")
    assert "plan mixes actions" in out.result["error"] and harness.transport.calls == []


# ---- bad input and bad config never touch a host ----------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        "deploy honcho-redis please",
        None,
        [],
        {},
        {"plan": 5},
        {"plan": {"module": "honcho-redis"}},
        {"plan": plan(changes="everything")},
        {"plan": plan(), "approval": "yes"},
        {"plan": plan(), "approval_timeout_seconds": -1},
    ],
)
async def test_malformed_input_is_blocked_within_seconds(harness, request_):
    started = time.monotonic()
    out = await harness.apply(request_)
    assert (out.status, out.result["exitCode"], out.error_type) == ("blocked", 3, "PolicyViolation")
    assert out.result["error"].startswith("invalid apply input")
    assert time.monotonic() - started < 10
    assert harness.transport.calls == []
    desc = await out.handle.describe()
    assert desc.status == WorkflowExecutionStatus.FAILED


async def test_broken_module_file_is_a_tool_error(harness):
    (harness.root / "modules" / "honcho-redis" / "module.yaml").write_text("id: [unclosed\n")
    out = await harness.apply(apply_input())
    assert (out.status, out.result["exitCode"], out.error_type) == ("tool_error", 2, "ToolError")
    assert harness.transport.calls == []


async def test_missing_hosts_file_is_a_tool_error(harness):
    (harness.root / "hosts.yaml").unlink()
    out = await harness.apply(apply_input())
    assert out.status == "tool_error" and "hosts.yaml" in out.result["error"]
    assert harness.transport.calls == []


async def test_a_state_folder_that_never_takes_a_record_leaves_the_release_applied(harness):
    # tests/workflows/test_records.py has the records written once the folder is back.
    state = harness.settings.state_dir
    state.parent.mkdir(parents=True)
    state.write_text("a file where the state folder should be")
    out = await harness.apply(apply_input())  # a day of retries, skipped through
    assert (out.status, out.error_type, out.result["state_artifact"]) == ("applied", None, None)
    assert harness.transport.commands("compose_up") == [COMMAND]
    assert harness.transport.commands("compose_rollback") == []


async def test_config_edits_need_no_worker_restart(harness):
    async with harness.worker():
        first = await harness.outcome(await harness.start(apply_input()))
        write_platform(harness.root, hosts={"rs2000": host_doc(harness.root, user="root")})
        second = await harness.outcome(await harness.start(apply_input()))
    assert (first.status, second.status) == ("applied", "blocked")
    assert "never root" in second.result["error"]


# ---- one module, one apply at a time -----------------------------------------------


async def test_applies_of_one_module_never_overlap(harness):
    release = asyncio.Event()

    async def slow_up(timeout_s: float):
        await release.wait()
        return ok()

    harness.transport.script = {"compose_up": [slow_up, ok()]}
    async with harness.worker():
        first = await harness.start(apply_input(), workflow_id="apply-first")
        await wait_for_phase(first, "applying")
        for _ in range(100):  # until the first one is inside compose up
            if harness.transport.commands("compose_up"):
                break
            await asyncio.sleep(0.05)
        second = await harness.start(apply_input(), workflow_id="apply-second")
        await asyncio.sleep(1.0)
        # The second waits for the lock: compose up has still run only once.
        assert harness.transport.commands("compose_up") == [COMMAND]
        assert (await second.query("status"))["phase"] == "waiting_for_lock"
        attrs = {k.name: v for k, v in (await second.describe()).typed_search_attributes}
        assert attrs["PlatformStatus"] == "waiting_for_lock"
        release.set()
        outcomes = [await harness.outcome(first), await harness.outcome(second)]
    assert [o.status for o in outcomes] == ["applied", "applied"]
    assert harness.transport.commands("compose_up") == [COMMAND, COMMAND]
    assert harness.transport.max_running == 1
    # The waiter asked who holds the lock once, at its first taken start, and replays.
    history = await second.fetch_history()
    assert activity_types(history).count("describe_lock_holder") == 1
    assert await replay(history) is None


@workflow.defn(name="ProjectLockWorkflow", sandboxed=False)
class LockSlowToClose(ProjectLockWorkflow):
    """The real lock, but it closes a second after its release (as on a busy server)."""

    @workflow.run
    async def run(self, request: LockRequest) -> list[str] | None:
        waiting = await super().run(request)
        await workflow.sleep(1)
        return waiting


@workflow.defn(name="ProjectLockWorkflow", sandboxed=False)
class LockThatLosesEnqueues(ProjectLockWorkflow):
    """Every enqueue reaches it as it closes, and is lost with it."""

    @workflow.run
    async def run(self, request: LockRequest) -> list[str] | None:
        return await super().run(request)

    def _enqueue(self, ids: list[str]) -> None:
        pass


async def _two_applies_of_one_project(harness, lock: type, then) -> list:
    release = asyncio.Event()

    async def slow_up(timeout_s: float):
        await release.wait()
        return ok()

    harness.transport.script = {"compose_up": [slow_up, ok()]}
    async with harness.worker([lock if w is ProjectLockWorkflow else w for w in ALL_WORKFLOWS]):
        first = await harness.start(apply_input(), workflow_id="apply-first")
        await wait_for_phase(first, "applying")
        second = await harness.start(apply_input(), workflow_id="apply-second")
        await wait_for_phase(second, "waiting_for_lock")
        await then(second)
        release.set()
        outcomes = [await harness.outcome(first), await harness.outcome(second)]
        assert [o.status for o in outcomes] == ["applied", "applied"]
        return [e async for e in second.fetch_history_events()]


async def test_a_waiter_is_told_its_turn_once_the_lock_has_closed(harness):
    history = await _two_applies_of_one_project(harness, LockSlowToClose, lambda _: asyncio.sleep(0.5))
    turn = next(i for i, e in enumerate(history)
                if e.workflow_execution_signaled_event_attributes.signal_name == LOCK_FREE)
    # Told by the holder after the lock closed, its first start takes it: no failed start,
    # no poll. (Told by the lock itself, before it closed, it found it open and polled.)
    # Its own poll may take it just before it is told: either way, at once.
    assert not any(e.HasField("start_child_workflow_execution_failed_event_attributes") for e in history[turn:])
    locked = [e for e in history if e.HasField("child_workflow_execution_started_event_attributes")][-1]
    assert abs(locked.event_time.ToDatetime() - history[turn].event_time.ToDatetime()) < timedelta(seconds=1)


async def test_a_waiter_whose_enqueue_was_lost_asks_again_within_seconds(harness):
    async def wait_two_seconds(_):
        await asyncio.sleep(2)

    history = await _two_applies_of_one_project(harness, LockThatLosesEnqueues, wait_two_seconds)
    polls = [e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta() for e in history
             if e.HasField("timer_started_event_attributes")]
    # LOCK_POLLS, then LOCK_POLL: a lost enqueue costs a second, not 10 s.
    assert polls[:2] == [timedelta(seconds=1), timedelta(seconds=10)], polls


# ---- verify_checkout --------------------------------------------------------------


async def test_verify_checkout_confirms_the_host_holds_the_approved_commit(harness):
    write_platform(harness.root, hosts={"rs2000": host_doc(harness.root, verify_checkout=True)})
    harness.transport.script = {"git_head": [ok(stdout=SHA + "\n")]}
    out = await harness.apply(apply_input())
    assert out.status == "applied"
    commands = harness.transport.commands()
    assert sorted(commands[:2]) == sorted([GIT_HEAD, IMAGES_COMMAND])  # read side by side
    assert commands[2:4] == ["platform-agent check", COMMAND]


@pytest.mark.parametrize("answer", [ok(stdout=OTHER_SHA + "\n"), failed(128, "fatal: not a git repository")])
async def test_verify_checkout_blocks_when_the_host_holds_something_else(harness, answer):
    write_platform(harness.root, hosts={"rs2000": host_doc(harness.root, verify_checkout=True)})
    harness.transport.script = {"git_head": [answer]}
    out = await harness.apply(apply_input())
    assert (out.status, out.error_type) == ("blocked", "PolicyViolation")
    # Only read: the checkout, and the images listed beside it.
    assert sorted(harness.transport.commands()) == sorted([GIT_HEAD, IMAGES_COMMAND])
    assert out.result["rollback"] is None  # nothing was changed, so nothing to roll back


async def test_verify_checkout_is_on_by_default(harness):
    harness.transport.head = OTHER_SHA  # the host's checkout is not the approved commit
    out = await harness.apply(apply_input())
    assert (out.status, out.error_type) == ("blocked", "PolicyViolation")
    assert sorted(harness.transport.commands()) == sorted([GIT_HEAD, IMAGES_COMMAND])


async def test_an_explicit_opt_out_is_recorded_as_unverified(harness):
    write_platform(harness.root, hosts={"rs2000": host_doc(harness.root, verify_checkout=False)})
    out = await harness.apply(apply_input())
    assert out.status == "applied" and out.result["checkout_verified"] is False
    assert harness.transport.commands("git_head") == []
    assert audit_lines(harness)[-1]["checkout_verified"] is False


# ---- what the Web UI shows ---------------------------------------------------------


async def test_the_ui_sees_each_phase_what_it_waits_for_and_each_step(harness):
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        await wait_for_phase(handle, "awaiting_approval")
        desc = await handle.describe()
        attrs = {k.name: v for k, v in desc.typed_search_attributes}
        metadata = await handle.query("__temporal_workflow_metadata")
        await handle.signal("approve", approval())
        out = await harness.outcome(handle)
    assert out.status == "applied"
    assert attrs["PlatformStatus"] == "awaiting_approval"  # not "running" in every phase
    assert "Waiting for an approval of `0123456`" in metadata.current_details
    events = (await handle.fetch_history()).events
    upserts = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        for e in events
        if e.HasField("upsert_workflow_search_attributes_event_attributes")
    ]
    upserted = [fields for fields in upserts if "TemporalChangeVersion" not in fields]  # the SDK's, one a patch
    phases = [json.loads(fields["PlatformStatus"].data) for fields in upserted]
    # One upsert each time the apply waits on the server: the phases that local steps
    # pass through within one workflow task are never visible, so never sent.
    assert phases == ["awaiting_approval", "validating", "applying", "health_check", "persisting", "applied"]
    assert set(upserted[0]) == {"PlatformStatus", "PlatformModule", "PlatformHost"}
    # Local activities (the quick checks, the state record) carry their summary on their marker.
    summaries = {
        e.user_metadata.summary.data
        for e in events
        if e.HasField("activity_task_scheduled_event_attributes") or e.HasField("marker_recorded_event_attributes")
    }
    assert {json.loads(s) for s in summaries if s} >= {
        "1 validate plan", "2 check approval", "3 guard compose path", "4 check host allowlist",
        "4 verify the host's checkout", "5 snapshot: compose images", "5 compose up", "6 health smoke: compose ps",
        "7 persist state",
    }


async def test_a_person_is_told_when_an_apply_waits_and_before_the_wait_ends(harness):
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None, approval_timeout_seconds=7200))
        out = await harness.outcome(handle)  # nobody approves: the wait runs out in skipped time
    assert out.status == "approval_expired"
    events = (await handle.fetch_history()).events
    scheduled = [
        (e.event_time.ToDatetime(), e.activity_task_scheduled_event_attributes)
        for e in events
        if e.activity_task_scheduled_event_attributes.activity_type.name == "notify"
    ]
    notified = [json.loads(attrs.input.payloads[0].data)["event"] for _, attrs in scheduled]
    assert notified == ["awaiting_approval", "approval_expiring"]
    started = events[0].event_time.ToDatetime()
    # the warning comes a tenth of the wait (at most an hour) before the deadline: 720 s of 7200
    assert 6470 <= (scheduled[1][0] - started).total_seconds() <= 6500


# ---- what an operator sees in the Web UI ----------------------------------------------


async def test_current_details_name_the_apply_then_its_pr_and_who_approved(harness):
    """The static summary is fixed at the start, before a later approval names its PR."""
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        await wait_for_phase(handle, "awaiting_approval")
        waiting = (await handle.query("__temporal_workflow_metadata")).current_details
        await handle.signal("approve", approval(approved_by="alice"))
        out = await harness.outcome(handle)
        done = (await handle.query("__temporal_workflow_metadata")).current_details
    assert out.status == "applied"
    assert waiting.startswith("**honcho-redis@rs2000** `0123456` awaiting approval\n\n"), waiting
    assert done.startswith("**honcho-redis@rs2000** `0123456` PR #165, approved by alice\n\n"), done
    assert "**applied** (exit code 9)" in done, done


async def test_a_failed_apply_says_its_type_and_reason_with_no_stack_trace(harness):
    harness.transport.script = {"compose_ps": [ps("honcho-redis", "running", "unhealthy")]}
    async with harness.worker():
        out = await harness.outcome(await harness.start(apply_input()))
        details = (await out.handle.query("__temporal_workflow_metadata")).current_details
    assert out.status == "unhealthy"
    assert "**unhealthy** (Unhealthy, exit code 4): " in details, details
    [failed] = [e.workflow_execution_failed_event_attributes.failure for e in (await out.handle.fetch_history()).events
                if e.HasField("workflow_execution_failed_event_attributes")]
    # What the Web UI shows as the Result: our message, not a Python traceback.
    assert failed.message == out.result["error"] and failed.application_failure_info.type == "Unhealthy"
    assert failed.stack_trace == "", failed.stack_trace


async def test_the_lock_carries_platform_kind_so_a_list_can_leave_it_out(harness):
    out = await harness.apply(apply_input())
    assert out.status == "applied"
    lock = await harness.client.get_workflow_handle(project_lock_id("rs2000", "core")).describe()
    assert lock.typed_search_attributes.get(PLATFORM_KIND) == "lock"


COMPOSE = "docker compose -f /opt/platform/compose/core/compose.yaml"


@pytest.mark.parametrize("action, shown", [
    ("update", f"{COMPOSE} up -d honcho-redis"),
    ("recreate", f"{COMPOSE} up -d --force-recreate --no-deps honcho-redis"),
    ("restart", f"{COMPOSE} restart honcho-redis"),
])
async def test_the_ui_shows_the_compose_command_the_action_runs(harness, action, shown):
    gate = asyncio.Event()

    async def held_up(timeout_s: float):
        await gate.wait()
        return ok()

    harness.transport.script = {"compose_up": [held_up]}
    async with harness.worker():
        request = apply_input(plan(changes=[change(action=action)]), approval(allow_destructive=True))
        handle = await harness.start(request)
        details = ""
        for _ in range(200):  # compose up is held: the details say what runs until it returns
            details = (await handle.query("__temporal_workflow_metadata")).current_details
            if "Running `" in details:
                break
            await asyncio.sleep(0.05)
        gate.set()
        out = await harness.outcome(handle)
    assert out.status == "applied"
    assert f"Running `{shown}` on rs2000" in details, details
