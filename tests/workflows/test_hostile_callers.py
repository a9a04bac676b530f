"""The merge blockers against anyone who can reach the namespace: callers that
skip the workflow, inputs and messages that would wedge it, rejects and
cancels at every point before compose up, overlapping compose projects,
and forged approvals. Time-skipping server, fake transport, gate open."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.worker import Worker

from platformctl.models import Approval
from platformctl.policy.approval import sign
from platformctl.policy.plan import plan_digest
from platformctl.state import read_status
from platformctl.transport.fake import hang, ok
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
from tests.workflows.test_apply import COMMAND, audit_lines, wait_for_phase
from workflows.approval import MAX_REFUSED

# ---- 1. activities act only for this worker's own workflows ------------------------


@workflow.defn(name="ApplyWorkflow", sandboxed=False)
class RogueApply:
    """Named like ours, but run by another worker on another task queue."""

    @workflow.run
    async def run(self, req: dict) -> str:
        try:
            await workflow.execute_activity(
                req["activity"], req["input"], task_queue=req["queue"],
                start_to_close_timeout=timedelta(seconds=10), retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except ActivityError as e:
            assert isinstance(e.cause, ApplicationError)
            return f"{e.cause.type}: {e.cause.message}"
        return "ran"


def hand_made_target(root) -> dict:
    host = {**host_doc(root), "name": "evil", "address": "10.9.9.9", "user": "deploy"}
    return {
        "host": host, "compose_path": "/etc/compose.yml", "compose_service": "x",
        "command": "docker compose -f /etc/compose.yml up -d x", "execute": True,
    }


@pytest.mark.parametrize("activity", ["compose_up", "compose_ps", "verify_checkout", "persist_state", "rollback"])
async def test_an_activity_scheduled_by_a_workflow_on_another_queue_runs_nothing(harness, activity):
    target = hand_made_target(harness.root)
    inputs = {
        "compose_up": {"target": target, "timeout_seconds": 5, "module": "honcho-redis", "source_sha": SHA,
                       "approval": approval()},
        "compose_ps": {"target": target, "module": "honcho-redis"},
        "verify_checkout": {"target": target, "approved_sha": SHA, "module": "honcho-redis"},
        "persist_state": {"result": {"status": "applied", "exitCode": 9, "module": "../../etc"},
                          "source_sha": SHA, "approved_pr": 1, "plan_digest": None, "workflow_id": "w", "run_id": "r"},
        "rollback": {"result": {"status": "unhealthy", "exitCode": 4, "module": "honcho-redis"},
                     "source_sha": SHA, "workflow_id": "w"},
    }
    rogue_queue = f"rogue-{uuid.uuid4()}"
    async with harness.worker(), Worker(harness.client, task_queue=rogue_queue, workflows=[RogueApply]):
        said = await harness.client.execute_workflow(
            "ApplyWorkflow", {"activity": activity, "input": inputs[activity], "queue": harness.task_queue},
            id=f"rogue-{uuid.uuid4()}", task_queue=rogue_queue,
        )
    assert said.startswith("PolicyViolation: ") and "not this worker's" in said, said
    assert harness.transport.calls == []
    assert not harness.settings.state_dir.exists()


async def test_a_remote_step_refuses_when_hosts_yaml_changed_under_the_apply(harness):
    async def edit_hosts_then_answer(timeout_s: float):
        write_platform(harness.root, hosts={"rs2000": host_doc(harness.root, address="10.6.6.6")})
        return ok()

    harness.transport.script = {"compose_up": [edit_hosts_then_answer]}
    out = await harness.apply(apply_input())
    assert (out.status, out.error_type) == ("blocked", "PolicyViolation")
    assert "no longer give the host" in out.result["error"]
    assert harness.transport.commands("compose_ps") == []  # the poll was refused before it ran
    assert out.result["rollback"] is not None


# ---- 2. no input wedges a workflow ----------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


def raw_json(value: Any) -> RawValue:
    """JSON as a caller may send it: the client's own converter refuses deep nesting."""
    return RawValue(Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode()))


@pytest.mark.parametrize(
    "request_, message",
    [
        (apply_input(approval_timeout_seconds=10**14), "approval_timeout_seconds"),
        (apply_input(approval_timeout_seconds=30 * 86400 + 1), "approval_timeout_seconds"),
        (apply_input(extra=nested(300)), "nests deeper"),
        (apply_input(plan(changes=[change(summary="x" * 4000)] * 500)), "bytes, over the"),
        (apply_input(plan(changes=[change()] * 1001)), "changes"),
        (apply_input(plan(module="m" * 5000)), "plan.module"),
        # JSON's "\ud800": half a surrogate pair, which no step result holding it could encode.
        (apply_input(plan(module="honcho-redis\ud800")), "lone surrogate"),
        (apply_input(extra={"\udfff": 1}), "lone surrogate"),
    ],
    ids=["timeout-1e14", "timeout-over-30-days", "nested-300", "plan-2mb", "1001-changes", "5k-string",
         "lone-surrogate", "lone-surrogate-key"],
)
async def test_input_past_a_bound_is_blocked_within_seconds(harness, request_, message):
    out = await harness.apply(raw_json(request_))
    assert (out.status, out.error_type) == ("blocked", "PolicyViolation")
    assert message in out.result["error"], out.result["error"]
    assert harness.transport.calls == []
    assert [a["status"] for a in audit_lines(harness)] == ["blocked"]


async def test_two_start_arguments_are_blocked(harness):
    async with harness.worker():
        handle = await harness.client.start_workflow(
            "ApplyWorkflow",
            args=[apply_input(), apply_input()],
            id=f"apply-{uuid.uuid4()}",
            task_queue=harness.task_queue,
        )
        out = await harness.outcome(handle)
    assert out.status == "blocked" and "got 2 arguments" in out.result["error"]


async def test_a_module_file_past_a_bound_is_blocked(harness):
    write_platform(harness.root, modules=[module_doc(health={"poll_seconds": 10**14, "timeout_seconds": 60})])
    out = await harness.apply(apply_input())
    assert (out.status, out.error_type) == ("blocked", "PolicyViolation") and harness.transport.calls == []


async def test_an_unknown_workflow_type_fails_at_once(harness):
    async with harness.worker():
        with pytest.raises(WorkflowFailureError) as e:
            await harness.client.execute_workflow(
                "ReapplyWorkflw", {}, id=f"x-{uuid.uuid4()}", task_queue=harness.task_queue,
                execution_timeout=timedelta(seconds=30),
            )
    assert isinstance(e.value.cause, ApplicationError) and e.value.cause.type == "UnknownWorkflowType"


@pytest.mark.parametrize(
    "args",
    [[approval(), approval()], [], [nested(300)], ["not an object"], [{**approval(), "approved_by": "ci\ud800"}]],
    ids=["two-arguments", "no-argument", "nested-300", "string", "lone-surrogate"],
)
async def test_any_approve_signal_shape_is_handled_without_a_wedge(harness, args):
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        await wait_for_phase(handle, "awaiting_approval")
        await handle.signal("approve", args=[raw_json(a) for a in args])
        out = await harness.outcome(handle)
    expected = "applied" if args and args[0] == approval() else "approval_mismatch"
    assert out.status == expected, out.result["error"]


async def test_an_unreadable_reject_still_rejects(harness):
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        await wait_for_phase(handle, "awaiting_approval")
        await handle.signal("reject", args=[raw_json(nested(300)), "extra"])
        out = await harness.outcome(handle)
    assert out.status == "rejected" and harness.transport.calls == []


# ---- 3. a reject holds at every point before compose up -------------------------------


async def test_a_reject_while_waiting_for_the_lock_stops_the_apply(harness):
    release = asyncio.Event()

    async def slow_up(timeout_s: float):
        await release.wait()
        return ok()

    harness.transport.script = {"compose_up": [slow_up, ok()]}
    async with harness.worker():
        first = await harness.start(apply_input(), workflow_id=f"first-{uuid.uuid4()}")
        await wait_for_phase(first, "applying")
        second = await harness.start(apply_input())
        await wait_for_phase(second, "waiting_for_lock")
        await second.signal("reject", {"reason": "not today", "rejected_by": "ops"})
        out = await harness.outcome(second)
        release.set()
        assert (await harness.outcome(first)).status == "applied"
    assert (out.status, out.error_type) == ("rejected", "ApplyRejected")
    assert "by ops" in out.result["error"]
    assert harness.transport.commands("compose_up") == [COMMAND]
    assert [a.get("rejected_by") for a in audit_lines(harness) if a["status"] == "rejected"] == ["ops"]


async def test_a_reject_during_verify_checkout_stops_the_apply(harness):
    handle_box: list = []

    async def git_then_reject(timeout_s: float):
        await handle_box[0].signal("reject", {"reason": "wrong window"})
        return ok(SHA + "\n")

    harness.transport.script = {"git_head": [git_then_reject]}
    async with harness.worker():
        handle_box.append(await harness.start(apply_input()))
        out = await harness.outcome(handle_box[0])
    assert out.status == "rejected"
    assert harness.transport.commands("compose_up") == []


# ---- 4. a cancel leaves a trace, and rolls back once compose up started -----------


async def test_a_cancel_during_compose_up_waits_for_its_outcome_then_rolls_back_and_records(harness):
    # The first ask hangs until the cancel closes its channel; compose goes on on the
    # host, and the cancel asks the agent again for its outcome before it reports.
    harness.transport.script = {"compose_up": [hang, ok()]}
    async with harness.worker():
        handle = await harness.start(apply_input())
        for _ in range(200):
            if harness.transport.running:
                break
            await asyncio.sleep(0.05)
        cancelled_at = time.monotonic()
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as e:
            await handle.result()
    assert isinstance(e.value.cause, CancelledError)
    assert harness.transport.running == 0
    [first, again] = [c for _, c in harness.transport.calls if c.kind == "compose_up"]
    assert first == again  # the same run's `apply`: the agent answers it, never runs it twice
    # Seen at the next heartbeat: worker.py's throttle, not 80% of the heartbeat timeout.
    assert time.monotonic() - cancelled_at < 10
    [line] = audit_lines(harness)
    assert line["status"] == "cancelled" and line["exitCode"] == 5
    state = read_status(harness.settings.state_dir, "honcho-redis")
    assert state.status == "cancelled" and state.last_failure.status == "cancelled"
    attrs = {k.name: v for k, v in (await handle.describe()).typed_search_attributes}
    assert attrs["PlatformStatus"] == "cancelled"


async def test_a_cancel_while_awaiting_approval_is_recorded(harness):
    async with harness.worker():
        applied = await harness.outcome(await harness.start(apply_input()))
        handle = await harness.start(apply_input(approval_=None), workflow_id=f"cancelled-{uuid.uuid4()}")
        await wait_for_phase(handle, "awaiting_approval")
        harness.transport.calls.clear()
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert [a["status"] for a in audit_lines(harness)] == ["applied", "cancelled"]
    assert harness.transport.calls == []
    # In the status file like any other outcome (CONTRACT.md), the last good apply kept.
    state = read_status(harness.settings.state_dir, "honcho-redis")
    assert (state.status, state.workflow_id) == ("cancelled", applied.handle.id)
    failure = state.last_failure
    assert (failure.status, failure.workflow_id, failure.rollback) == ("cancelled", handle.id, None)
    assert failure.error == "cancel requested before compose up started"


# ---- 8. one compose project at a time, handed over at once ------------------------


def two_modules(root, file_a: str, file_b: str) -> None:
    # no health window: a timer in the holder's apply would let time skip past the waiter's retry
    health = {"stable_seconds": 0, "timeout_seconds": 10}
    write_platform(root, modules=[
        module_doc("svc-a", compose_file=file_a, compose_service="a", health=health),
        module_doc("svc-b", compose_file=file_b, compose_service="b", health=health),
    ])


def plan_for(module: str, service: str) -> dict:
    return apply_input(plan(module=module, changes=[change(service=service)]))


async def run_two(harness, phase_b: str, running: int) -> list:
    """a's compose up runs until b is in `phase_b` with `running` compose ups running, and stays so a moment."""
    gate = asyncio.Event()

    async def slow_up(timeout_s: float):
        await gate.wait()
        return ok()

    harness.transport.script = {"compose_up": [slow_up, slow_up]}
    async with harness.worker():
        a = await harness.start(plan_for("svc-a", "a"), workflow_id=f"a-{uuid.uuid4()}")
        await wait_for_phase(a, "applying")
        b = await harness.start(plan_for("svc-b", "b"), workflow_id=f"b-{uuid.uuid4()}")
        await wait_for_phase(b, phase_b)  # polled: a loaded machine may take seconds to get there
        for _ in range(200):
            if harness.transport.running == running:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert (await b.query("status"))["phase"] == phase_b
        max_running = harness.transport.max_running
        gate.set()
        outs = [await harness.outcome(a), await harness.outcome(b)]
    assert [o.status for o in outs] == ["applied", "applied"]
    return [max_running, outs]


async def test_two_modules_of_one_compose_project_take_turns(harness):
    # compose names a project after the file's folder: both are project "core"
    two_modules(harness.root, "a/core/x.yml", "b/core/y.yml")
    max_running, (a, b) = await run_two(harness, "waiting_for_lock", running=1)
    assert max_running == 1 and harness.transport.max_running == 1
    events = (await b.handle.fetch_history()).events
    assert any(e.HasField("start_child_workflow_execution_failed_event_attributes") for e in events)
    # Taken as soon as the holder's lock closed (handed on, or its own poll just then),
    # not at a poll every LOCK_POLL (10 s). Event times are whole milliseconds: both can fall in one.
    closed = next(e for e in (await a.handle.fetch_history()).events
                  if e.HasField("child_workflow_execution_completed_event_attributes"))
    locked = [e for e in events if e.HasField("child_workflow_execution_started_event_attributes")][-1]
    assert timedelta(0) <= locked.event_time.ToDatetime() - closed.event_time.ToDatetime() < timedelta(seconds=2)


async def test_junk_lock_messages_from_anyone_leave_the_lock_and_its_waiter_working(harness):
    """Ids that are not text (a lone surrogate) in a lock_free to the waiter and an
    enqueue to the lock: both are dropped, the waiter still gets its turn."""
    gate = asyncio.Event()

    async def slow_up(timeout_s: float):
        await gate.wait()
        return ok()

    two_modules(harness.root, "a/core/x.yml", "b/core/y.yml")
    harness.transport.script = {"compose_up": [slow_up, ok()]}
    async with harness.worker():
        a = await harness.start(plan_for("svc-a", "a"), workflow_id=f"a-{uuid.uuid4()}")
        await wait_for_phase(a, "applying")
        b = await harness.start(plan_for("svc-b", "b"), workflow_id=f"b-{uuid.uuid4()}")
        await wait_for_phase(b, "waiting_for_lock")
        junk = raw_json(["x\ud800"])
        await b.signal("lock_free", junk)
        lock = harness.client.get_workflow_handle((await b.query("status"))["lock"])
        await lock.signal("enqueue", junk)
        gate.set()
        outs = [await harness.outcome(a), await harness.outcome(b)]
    assert [o.status for o in outs] == ["applied", "applied"]
    for handle in (a, b):
        assert not [e for e in (await handle.fetch_history()).events
                    if e.HasField("workflow_task_failed_event_attributes")]


async def test_different_compose_projects_run_in_parallel(harness):
    two_modules(harness.root, "a/core/x.yml", "a/web/y.yml")
    max_running, _ = await run_two(harness, "applying", running=2)
    assert max_running == 2


async def test_the_lock_shows_its_holder_and_queue(harness):
    project = f"p{uuid.uuid4().hex[:12]}"
    write_platform(harness.root, modules=[module_doc(compose_file=f"{project}/compose.yaml")])
    gate = asyncio.Event()

    async def slow_up(timeout_s: float):
        await gate.wait()
        return ok()

    harness.transport.script = {"compose_up": [slow_up, ok(), ok()]}
    async with harness.worker():
        first = await harness.start(apply_input(), workflow_id="holder-1")
        await wait_for_phase(first, "applying")
        waiters = [await harness.start(apply_input(), workflow_id=f"waiter-{i}") for i in (1, 2)]
        for w in waiters:
            await wait_for_phase(w, "waiting_for_lock")
        lock = harness.client.get_workflow_handle(f"platform-lock:rs2000:{project}")
        state = await lock.query("state")
        waiting_status = await waiters[0].query("status")
        gate.set()
        for h in [first, *waiters]:
            assert (await harness.outcome(h)).status == "applied"
    assert state["holder"] == "holder-1" and sorted(state["waiting"]) == ["waiter-1", "waiter-2"]
    assert waiting_status["lock"] == f"platform-lock:rs2000:{project}"


@pytest.mark.parametrize(
    ("squatter", "queue", "what"),
    [("Squatter", "nobody-polls", "a workflow of another type"),
     ("ProjectLockWorkflow", "nobody-polls", "a lock on another task queue")],
    ids=["other-type", "lock-on-another-queue"],
)
async def test_a_lock_id_taken_by_a_squatter_ends_the_apply_blocked_at_once(harness, squatter, queue, what):
    """Anyone with namespace access can start a workflow under a lock's id: the apply
    says so at once instead of waiting 15 minutes for a lock that never hands on."""
    project = f"p{uuid.uuid4().hex[:12]}"
    write_platform(harness.root, modules=[module_doc(compose_file=f"{project}/compose.yaml")])
    lock_id = f"platform-lock:rs2000:{project}"
    squat = await harness.client.start_workflow(squatter, {}, id=lock_id, task_queue=queue)
    try:
        out = await harness.apply(apply_input())
    finally:
        await squat.terminate("test over")
    assert (out.status, out.error_type) == ("blocked", "PolicyViolation"), out.result
    assert out.result["error"] == (
        f"the lock id {lock_id} is held by {what}, which never hands it on: "
        f"ask an operator to end it (temporal workflow terminate --workflow-id {lock_id})"
    )
    assert harness.transport.commands("compose_up") == []
    described = await out.handle.describe()  # in workflow time, which skips waits
    assert described.close_time is not None and described.close_time - described.start_time < timedelta(minutes=1)


# ---- 10. only signed approvals count when the worker has a key ---------------------


@pytest.fixture
def key(harness, tmp_path) -> bytes:
    path = tmp_path / "approval.key"
    path.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    harness.approval_key_file = path
    return b"0123456789abcdef0123456789abcdef"


def signed(key: bytes, **over: Any) -> dict:
    raw = approval(**{"plan_digest": plan_digest(plan()), **over})
    raw["signature"] = sign(key, "honcho-redis", Approval.model_validate(raw))
    return raw


async def test_a_signed_approval_applies(harness, key):
    assert (await harness.apply(apply_input(approval_=signed(key)))).status == "applied"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda key: approval(plan_digest=plan_digest(plan())), "not signed"),
        # Signed, but of no plan in particular (the form before plan binding), or of another plan.
        (lambda key: signed(key, plan_digest=None), "predates plan binding"),
        (lambda key: signed(key, plan_digest=plan_digest(plan(changes=[]))), "approves another plan"),
        (lambda key: {**signed(key), "approved_pr": 166}, "signature does not match"),
        (lambda key: {**signed(key), "allow_destructive": True}, "signature does not match"),
        (lambda key: signed(b"another key, not the worker's"), "signature does not match"),
        (lambda key: signed(key, expires_at="2020-01-01T00:00:00Z"), "expired"),
        (lambda key: signed(key, expires_at="2030-01-01T00:00:00"), "time zone"),
        # Both raised past the check (TypeError, OverflowError): tool_error after retries, exit 2.
        (lambda key: {**signed(key), "signature": "é" * 64}, "signature does not match"),
        (lambda key: signed(key, expires_at="9999-12-31T23:59:59-23:59"), "out of range"),
    ],
    ids=[
        "unsigned", "no-plan-digest", "other-plan", "altered-pr", "altered-destructive", "other-key", "expired",
        "naive-expiry", "non-ascii",
        "expiry-past-year-9999",
    ],
)
async def test_an_unsigned_altered_or_expired_approval_is_a_mismatch(harness, key, make, message):
    out = await harness.apply(apply_input(approval_=make(key)))
    assert (out.status, out.error_type) == ("approval_mismatch", "ApprovalMismatch")
    assert message in out.result["error"] and harness.transport.calls == []


async def test_compose_up_checks_the_signature_again(harness, key):
    """An approval that expires while the apply waits for its lock never runs."""
    soon = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    gate = asyncio.Event()

    async def slow_up(timeout_s: float):
        await gate.wait()
        return ok()

    harness.transport.script = {"compose_up": [slow_up, ok()]}
    async with harness.worker():
        first = await harness.start(apply_input(approval_=signed(key)), workflow_id=f"first-{uuid.uuid4()}")
        await wait_for_phase(first, "applying")
        second = await harness.start(apply_input(approval_=signed(key, expires_at=soon)))
        await wait_for_phase(second, "waiting_for_lock")
        await asyncio.sleep(3.5)
        gate.set()
        out = await harness.outcome(second)
    assert out.status == "approval_mismatch" and "expired" in out.result["error"]
    assert harness.transport.commands("compose_up") == [COMMAND]


# ---- the approve Update -----------------------------------------------------------


async def test_the_approve_update_refuses_a_wrong_sha_at_once_and_accepts_the_right_one(harness):
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        await wait_for_phase(handle, "awaiting_approval")
        with pytest.raises(WorkflowUpdateFailedError) as e:
            await handle.execute_update("approve", approval(sha=OTHER_SHA))
        assert "plan is for" in str(e.value.cause)
        # An approval of another plan of this module and SHA: refused by the validator, nothing in history.
        with pytest.raises(WorkflowUpdateFailedError) as e:
            await handle.execute_update("approve", approval(plan_digest=plan_digest(plan(changes=[]))))
        assert "approves another plan" in str(e.value.cause)
        assert (await handle.query("status"))["phase"] == "awaiting_approval"  # still waiting
        accepted = await handle.execute_update("approve", approval(plan_digest=plan_digest(plan())))
        out = await harness.outcome(handle)
    assert accepted["accepted"] is True and out.status == "applied"


async def test_an_update_sent_right_after_the_start_is_taken_and_a_repeat_gets_the_same_answer(harness):
    """CI starts the apply and approves it at once, before the wait for approval began."""
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        accepted = await handle.execute_update("approve", approval())  # no wait for "awaiting_approval"
        again = await handle.execute_update("approve", approval())  # a CI re-run delivers it again
        with pytest.raises(WorkflowUpdateFailedError) as e:
            await handle.execute_update("approve", approval(pr=999))
        out = await harness.outcome(handle)
    assert accepted["accepted"] is True and again["accepted"] is True
    assert "already has another approval" in str(e.value.cause)
    assert out.status == "applied" and harness.transport.commands("compose_up") == [COMMAND]


# ---- one rule per channel: a refused Update leaves the apply waiting ------------------


async def test_an_unsigned_or_expired_approval_through_the_update_is_refused_and_the_apply_waits(harness, key):
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        await wait_for_phase(handle, "awaiting_approval")
        for bad, why in ((approval(plan_digest=plan_digest(plan())), "not signed"),
                         (signed(key, expires_at="2020-01-01T00:00:00Z"), "expired")):
            with pytest.raises(WorkflowUpdateFailedError) as e:
                await handle.execute_update("approve", bad)
            assert why in str(e.value.cause), e.value.cause
            assert (await handle.query("status"))["phase"] == "awaiting_approval"  # still waiting
        accepted = await handle.execute_update("approve", signed(key))
        out = await harness.outcome(handle)
    assert accepted["accepted"] is True and out.status == "applied"
    assert harness.transport.commands("compose_up") == [COMMAND]


async def test_a_bad_signalled_approval_still_ends_the_apply(harness, key):
    """A signal has no caller to answer: its refusal is the apply's outcome, as before."""
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        await wait_for_phase(handle, "awaiting_approval")
        await handle.signal("approve", approval(plan_digest=plan_digest(plan())))
        out = await harness.outcome(handle)
    assert out.status == "approval_mismatch" and "not signed" in out.result["error"]
    assert harness.transport.commands("compose_up") == []


async def test_after_max_refused_updates_the_validator_refuses_every_further_one(harness, key):
    async with harness.worker():
        handle = await harness.start(apply_input(approval_=None))
        await wait_for_phase(handle, "awaiting_approval")
        unsigned = approval(plan_digest=plan_digest(plan()))
        for _ in range(MAX_REFUSED):
            with pytest.raises(WorkflowUpdateFailedError):
                await handle.execute_update("approve", unsigned)
        seen = len((await handle.fetch_history()).events)
        for offered in (unsigned, signed(key)):
            with pytest.raises(WorkflowUpdateFailedError) as e:
                await handle.execute_update("approve", offered)
            assert f"{MAX_REFUSED} approvals of this apply were refused" in str(e.value.cause)
        # The validator's refusals accept no update and run no check: nothing but workflow tasks.
        later = (await handle.fetch_history()).events[seen:]
        assert {EventType.Name(e.event_type) for e in later} <= {
            "EVENT_TYPE_WORKFLOW_TASK_SCHEDULED", "EVENT_TYPE_WORKFLOW_TASK_STARTED",
            "EVENT_TYPE_WORKFLOW_TASK_COMPLETED",
        }, later
        assert (await handle.query("status"))["phase"] == "awaiting_approval"
        await handle.signal("reject", {"reason": "too many tries"})
        out = await harness.outcome(handle)
    assert out.status == "rejected" and harness.transport.commands("compose_up") == []
