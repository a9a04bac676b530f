"""Module state kept in Temporal, and ReapplyWorkflow over it (a real dev server, fake transport)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from platformctl.models import ModuleState
from platformctl.module_state import module_state_id
from platformctl.policy.plan import plan_digest
from platformctl.transport.fake import failed, hang, ok, ps
from tests.conftest import Harness
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
from tests.workflows.conftest import FAST_HEALTH
from tests.workflows.test_apply import audit_lines
from tests.workflows.test_hostile_callers import raw_json

CHANGED = " Container core-honcho-redis-1  Recreate\n Container core-honcho-redis-1  Started\n"
UNCHANGED = " Container core-honcho-redis-1  Running\n"


async def module_state(harness, module: str = "honcho-redis") -> ModuleState | None:
    handle = harness.client.get_workflow_handle(module_state_id(harness.task_queue, module))
    return await handle.query("state", result_type=ModuleState)


async def reapply(harness, request: dict, workflow_id: str | None = None) -> tuple[str, dict]:
    """(how it ended, its result): "completed", or the ReapplyFailed error type."""
    handle = await harness.client.start_workflow(
        "ReapplyWorkflow", request, id=workflow_id or f"reapply-{uuid.uuid4()}", task_queue=harness.task_queue
    )
    try:
        return "completed", await handle.result()
    except WorkflowFailureError as e:
        assert isinstance(e.cause, ApplicationError)
        return e.cause.type or "", e.cause.details[0]


@pytest.fixture
def fresh_module(harness) -> str:
    """A module id of its own: module state workflows outlive a test on the shared server."""
    module = f"m-{uuid.uuid4().hex[:10]}"
    write_platform(harness.root, modules=[module_doc(module, compose_service="honcho-redis", health=FAST_HEALTH)])
    return module


@pytest.fixture
def harness(dev_env, tmp_path) -> Harness:
    write_platform(tmp_path)
    return Harness(client=dev_env.client, root=tmp_path)


def request_for(module: str, sha: str = SHA, **plan_over) -> dict:
    plan_ = plan(module=module, sha=sha, **plan_over)
    return apply_input(plan_, approval(sha=sha, plan_digest=plan_digest(plan_)))


async def test_an_applied_outcome_is_recorded_in_temporal(harness, fresh_module):
    async with harness.worker():
        out = await harness.outcome(await harness.start(request_for(fresh_module)))
        state = await module_state(harness, fresh_module)
    assert out.status == "applied"
    assert state is not None and state.last_applied is not None
    assert (state.last_applied.sha, state.last_applied.pr, state.last_applied.workflow_id) == (SHA, 165, out.handle.id)
    assert state.last_applied.plan.changes[0].target == "compose.service.honcho-redis"
    assert state.last_failure is None


async def test_a_failure_after_compose_up_is_recorded_and_keeps_the_last_good_apply(harness, fresh_module):
    async with harness.worker():
        await harness.outcome(await harness.start(request_for(fresh_module)))
        harness.transport.script = {"compose_up": [failed(1, "boom")]}
        harness.transport.head = OTHER_SHA
        out = await harness.outcome(await harness.start(request_for(fresh_module, OTHER_SHA)))
        state = await module_state(harness, fresh_module)
    assert out.status == "remote_failed"
    assert state.last_applied.sha == SHA
    assert (state.last_failure.sha, state.last_failure.status) == (OTHER_SHA, "remote_failed")


async def test_reapply_applies_the_last_approved_sha_again_and_reports_drift(harness, fresh_module):
    async with harness.worker():
        await harness.outcome(await harness.start(request_for(fresh_module)))
        harness.transport.calls.clear()
        harness.transport.script = {"compose_up": [ok(stderr=CHANGED)]}
        how, result = await reapply(harness, {"modules": [fresh_module], "max_parallel": 2})
    assert how == "completed"
    [entry] = result["results"]
    assert (entry["module"], entry["outcome"], entry["drift"]) == (fresh_module, "applied", True)
    assert entry["apply"]["status"] == "applied"
    assert harness.transport.commands("git_head") == ["git -C /opt/platform rev-parse HEAD"]


async def test_reapply_sends_the_plan_as_approved_and_skips_an_approval_of_no_plan(harness, fresh_module):
    # The model redacts the summary and drops the unknown field; the digest is of what was approved.
    exact = request_for(fresh_module, note="kept", changes=[change(summary="token=abcdefabcdef0123")])
    old = f"m-{uuid.uuid4().hex[:10]}"
    write_platform(harness.root, modules=[module_doc(m, compose_service="honcho-redis", health=FAST_HEALTH)
                                          for m in (fresh_module, old)])
    async with harness.worker():
        assert (await harness.outcome(await harness.start(exact))).status == "applied"
        # Approved before approvals named their plan (no key here, so it still applies once).
        unbound = apply_input(plan(module=old), approval())
        assert (await harness.outcome(await harness.start(unbound))).status == "applied"
        harness.transport.calls.clear()
        how, result = await reapply(harness, {"modules": [fresh_module, old]})
    assert how == "completed"
    by_module = {e["module"]: e for e in result["results"]}
    assert by_module[fresh_module]["outcome"] == "applied"
    assert by_module[old] == {**by_module[old], "outcome": "skipped",
                              "reason": "approval predates plan binding: approve once more"}
    assert len(harness.transport.commands("compose_up")) == 1


async def test_reapply_without_drift(harness, fresh_module):
    async with harness.worker():
        await harness.outcome(await harness.start(request_for(fresh_module)))
        harness.transport.script = {"compose_up": [ok(stderr=UNCHANGED)]}
        how, result = await reapply(harness, {"modules": [fresh_module]})
    assert how == "completed" and result["results"][0]["drift"] is False


async def test_reapply_skips_what_it_must_not_apply(harness, fresh_module):
    never = f"m-{uuid.uuid4().hex[:10]}"
    unverified = f"m-{uuid.uuid4().hex[:10]}"
    write_platform(
        harness.root,
        modules=[module_doc(m, compose_service="honcho-redis", health=FAST_HEALTH) for m in (fresh_module, never)]
        + [module_doc(unverified, host="loose", compose_service="honcho-redis", health=FAST_HEALTH)],
        hosts={"rs2000": host_doc(harness.root), "loose": host_doc(harness.root, verify_checkout=False)},
    )
    async with harness.worker():
        for m in (fresh_module, unverified):
            assert (await harness.outcome(await harness.start(request_for(m)))).status == "applied"
        # the checkout moved on to a commit that was never applied here
        harness.transport.head = OTHER_SHA
        harness.transport.calls.clear()
        how, result = await reapply(harness, {"modules": [fresh_module, never, unverified]})
    assert how == "completed"
    by_module = {e["module"]: e for e in result["results"]}
    assert [e["module"] for e in result["results"]] == [fresh_module, never, unverified]
    assert by_module[never]["outcome"] == "skipped" and "no successful apply" in by_module[never]["reason"]
    assert by_module[unverified]["outcome"] == "skipped" and "verify_checkout: false" in by_module[unverified]["reason"]
    assert by_module[fresh_module]["outcome"] == "skipped" and "holds commit" in by_module[fresh_module]["reason"]
    assert harness.transport.commands("compose_up") == []


async def test_reapply_skips_a_sha_whose_last_apply_failed(harness, fresh_module):
    async with harness.worker():
        await harness.outcome(await harness.start(request_for(fresh_module)))
        harness.transport.script = {"compose_ps": [ps("honcho-redis", "exited", "")]}
        assert (await harness.outcome(await harness.start(request_for(fresh_module)))).status == "unhealthy"
        harness.transport.calls.clear()
        how, result = await reapply(harness, {"modules": [fresh_module]})
    assert how == "completed"
    assert result["results"][0]["outcome"] == "skipped" and "failed (unhealthy)" in result["results"][0]["reason"]
    assert harness.transport.calls == []


async def test_reapply_fails_when_a_module_fails(harness, fresh_module):
    broken = f"m-{uuid.uuid4().hex[:10]}"
    write_platform(harness.root, modules=[
        module_doc(fresh_module, compose_service="honcho-redis", health=FAST_HEALTH),
        module_doc(broken, compose_service="honcho-redis", compose_file="../escape.yml", health=FAST_HEALTH),
    ])
    async with harness.worker():
        await harness.outcome(await harness.start(request_for(fresh_module)))
        harness.transport.script = {"compose_up": [failed(1, "daemon said no")]}
        how, result = await reapply(harness, {"modules": [fresh_module, broken]})
    assert how == "ReapplyFailed"
    outcomes = {e["module"]: e["outcome"] for e in result["results"]}
    assert outcomes == {fresh_module: "failed", broken: "failed"}
    assert result["results"][0]["apply"]["status"] == "remote_failed"
    assert "'..'" in result["results"][1]["reason"]


async def test_a_project_s_next_apply_queues_on_its_lock_while_the_one_before_it_runs(harness):
    """One slot is enough for a project: its next apply makes its checks while the
    one before it runs, and compose up never runs twice at once in the project."""
    project = f"p{uuid.uuid4().hex[:12]}"
    modules = [f"m-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    write_platform(harness.root, modules=[
        module_doc(m, compose_service="honcho-redis", compose_file=f"{project}/compose.yaml", health=FAST_HEALTH)
        for m in modules
    ])
    ups = {"running": 0, "most": 0}

    async def slow_up(timeout_s: float):
        ups["running"] += 1
        ups["most"] = max(ups["most"], ups["running"])
        await asyncio.sleep(0.5)
        ups["running"] -= 1
        return ok()

    async with harness.worker():
        for m in modules:
            assert (await harness.outcome(await harness.start(request_for(m)))).status == "applied"
        harness.transport.script = {"compose_up": [slow_up]}
        workflow_id = f"reapply-{uuid.uuid4()}"
        how, result = await reapply(harness, {"modules": modules, "max_parallel": 1}, workflow_id)
        history = (await harness.client.get_workflow_handle(workflow_id).fetch_history()).events
    assert how == "completed" and [e["outcome"] for e in result["results"]] == ["applied"] * 3
    assert ups["most"] == 1
    in_flight, most = 0, 0
    for e in history:
        in_flight += e.HasField("child_workflow_execution_started_event_attributes")
        in_flight -= e.HasField("child_workflow_execution_completed_event_attributes")
        most = max(most, in_flight)
    assert most == 2  # the one holding the lock and the next, waiting for it


async def test_a_cancelled_reapply_cancels_the_apply_waiting_on_the_lock_too(harness):
    """The next apply of a project runs beside the one ahead of it; a cancel reaches
    both, so the second never runs compose up (nor is it terminated mid-run when the
    re-apply closes)."""
    project = f"p{uuid.uuid4().hex[:12]}"
    modules = [f"m-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    write_platform(harness.root, modules=[
        module_doc(m, compose_service="honcho-redis", compose_file=f"{project}/compose.yaml", health=FAST_HEALTH)
        for m in modules
    ])
    gate = asyncio.Event()

    async def held_up(timeout_s: float):
        await gate.wait()
        return ok()

    async with harness.worker():
        for m in modules:
            assert (await harness.outcome(await harness.start(request_for(m)))).status == "applied"
        harness.transport.script = {"compose_up": [held_up, ok()]}
        harness.transport.calls.clear()
        handle = await harness.client.start_workflow(
            "ReapplyWorkflow", {"modules": modules, "max_parallel": 1},
            id=f"reapply-{uuid.uuid4()}", task_queue=harness.task_queue,
        )
        lock = harness.client.get_workflow_handle(f"platform-lock:rs2000:{project}")
        for _ in range(200):  # until one apply is in compose up and the other waits for it
            try:
                state = await lock.query("state")
                if state["waiting"]:
                    break
            except RPCError:
                pass
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the second apply never queued on the lock")
        await handle.cancel()
        holder = harness.client.get_workflow_handle(state["holder"])
        for _ in range(200):  # compose up ends only once the cancel has reached the apply in it
            if any(e.HasField("workflow_execution_cancel_requested_event_attributes")
                   for e in (await holder.fetch_history()).events):
                break
            await asyncio.sleep(0.05)
        gate.set()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        history = (await handle.fetch_history()).events
        children = [e.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
                    for e in history if e.HasField("child_workflow_execution_started_event_attributes")]
        ended = {c: (await harness.client.get_workflow_handle(c).describe()).status for c in children}
    # The holder ends as a cancel during compose up leaves it (here compose up may finish
    # before the activity hears of the cancel); the waiter was cancelled before its turn.
    assert sorted(children) == sorted([state["holder"], *state["waiting"]])
    assert ended[state["waiting"][0]] == WorkflowExecutionStatus.CANCELED
    assert WorkflowExecutionStatus.TERMINATED not in ended.values()
    assert len(harness.transport.commands("compose_up")) == 1


async def test_a_terminated_reapply_asks_its_apply_in_compose_up_to_stop_instead_of_terminating_it(
    harness, fresh_module
):
    async with harness.worker():
        assert (await harness.outcome(await harness.start(request_for(fresh_module)))).status == "applied"
        harness.transport.script = {"compose_up": [hang]}
        handle = await harness.client.start_workflow(
            "ReapplyWorkflow", {"modules": [fresh_module]}, id=f"reapply-{uuid.uuid4()}", task_queue=harness.task_queue
        )
        # Compose up is running once the transport has it: the phase alone also reads
        # `applying` while the images are listed, before compose up (a cancel there ends
        # the apply with nothing to roll back).
        for _ in range(200):
            if len(harness.transport.commands("compose_up")) == 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the re-apply's apply never reached compose up")
        children = [e.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
                    for e in (await handle.fetch_history()).events
                    if e.HasField("child_workflow_execution_started_event_attributes")]
        await handle.terminate("an operator stops the re-apply")
        apply = harness.client.get_workflow_handle(children[0])
        with pytest.raises(WorkflowFailureError):
            await apply.result()  # compose up stays held: only the cancel ends it
        ended = (await apply.describe()).status
    assert ended == WorkflowExecutionStatus.CANCELED
    [line] = [a for a in audit_lines(harness) if a["workflow_id"] == apply.id]
    assert line["status"] == "cancelled" and line["rollback"]["image"]["outcome"] == "restored"


async def test_a_module_named_twice_is_re_applied_once(harness):
    project = f"p{uuid.uuid4().hex[:12]}"
    a, b = (f"m-{uuid.uuid4().hex[:10]}" for _ in range(2))
    write_platform(harness.root, modules=[
        module_doc(m, compose_service="honcho-redis", compose_file=f"{project}/compose.yaml", health=FAST_HEALTH)
        for m in (a, b)
    ])
    async with harness.worker():
        for m in (a, b):
            assert (await harness.outcome(await harness.start(request_for(m)))).status == "applied"
        harness.transport.calls.clear()
        how, result = await reapply(harness, {"modules": [b, a, a, b]})
    assert how == "completed"
    assert [(e["module"], e["outcome"]) for e in result["results"]] == [(b, "applied"), (a, "applied")]
    assert len(harness.transport.commands("compose_up")) == 2


async def test_a_record_that_is_not_text_is_ignored_and_the_state_still_reads(harness, fresh_module):
    async with harness.worker():
        assert (await harness.outcome(await harness.start(request_for(fresh_module)))).status == "applied"
        state = await module_state(harness, fresh_module)
        assert state is not None and state.last_applied is not None
        poisoned = state.last_applied.model_dump(mode="json") | {"approved_by": "ci\ud800"}
        handle = harness.client.get_workflow_handle(module_state_id(harness.task_queue, fresh_module))
        await handle.signal("record", raw_json({"module": fresh_module, "applied": poisoned}))
        harness.transport.script = {"compose_up": [ok(stderr=UNCHANGED)]}
        how, result = await reapply(harness, {"modules": [fresh_module]})
        after = await module_state(harness, fresh_module)
    assert (how, result["results"][0]["outcome"]) == ("completed", "applied")
    assert after is not None and after.last_applied is not None
    assert after.last_applied.approved_by == state.last_applied.approved_by


@pytest.mark.parametrize("bad", [{"max_parallel": 0}, {"max_parallel": 1000}, {"modules": "all"}, "not an object"])
async def test_a_bad_reapply_input_fails_at_once_instead_of_wedging(harness, bad):
    async with harness.worker():
        handle = await harness.client.start_workflow(
            "ReapplyWorkflow", bad, id=f"reapply-{uuid.uuid4()}", task_queue=harness.task_queue
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()


async def test_on_a_host_that_syncs_its_checkout_an_apply_asks_for_sync_and_a_re_apply_never(harness, fresh_module):
    """A re-apply runs only where the checkout already is at the approved SHA: it must not move it."""
    write_platform(harness.root, modules=[module_doc(fresh_module, compose_service="honcho-redis", health=FAST_HEALTH)],
                   hosts={"rs2000": host_doc(harness.root, sync_checkout=True)})
    async with harness.worker():
        applied = await harness.outcome(await harness.start(request_for(fresh_module)))
        [first] = [c for _, c in harness.transport.calls if c.kind == "compose_up"]
        harness.transport.calls.clear()
        how, _ = await reapply(harness, {"modules": [fresh_module], "max_parallel": 1})
        [again] = [c for _, c in harness.transport.calls if c.kind == "compose_up"]
    assert applied.status == "applied" and how == "completed"
    assert "--sync" in first.argv and "--sync" not in again.argv, (first.argv, again.argv)
    assert harness.transport.commands("git_head") == ["git -C /opt/platform rev-parse HEAD"]  # the re-apply's own check
