"""The merge blockers through the real worker, dev server and sshd: callers
that skip the workflow, inputs that would wedge it, rejects and cancels,
overlapping compose projects, and signed approvals."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from datetime import timedelta

import pytest
from temporalio import workflow
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.worker import Worker

from platformctl.models import Approval
from platformctl.policy.approval import sign
from platformctl.policy.plan import plan_digest
from tests.e2e.conftest import compose_up_argv, ssh_host_entry, write_hosts, write_module
from tests.platform_files import SHA, apply_input, approval, change, plan
from tests.servers import NAMESPACE, TEMPORAL_CLI
from tests.sshd import eventually, process_running

QUICK_HEALTH = {"stable_seconds": 0, "timeout_seconds": 10, "poll_seconds": 1}


@pytest.fixture
def ssh_e2e(e2e, sshd_host):
    write_hosts(e2e.root, {"h1": ssh_host_entry(sshd_host)})
    return e2e


def request(module: str, service: str, **over) -> dict:
    return apply_input(plan(module=module, changes=[change(service)]), **over)


async def wait_phase(handle, *phases: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await handle.query("status"))["phase"] in phases:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{handle.id} never reached {phases}")


@workflow.defn(name="ApplyWorkflow", sandboxed=False)
class RogueApply:
    """Named like ours, on a task queue of its own, scheduling our activity directly."""

    @workflow.run
    async def run(self, req: dict) -> str:
        try:
            await workflow.execute_activity(
                "compose_up", req["input"], task_queue=req["queue"],
                start_to_close_timeout=timedelta(seconds=20), retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except ActivityError as e:
            assert isinstance(e.cause, ApplicationError)
            return f"{e.cause.type}: {e.cause.message}"
        return "ran"


async def test_compose_up_scheduled_from_another_task_queue_never_reaches_the_host(ssh_e2e, sshd_host):
    e2e = ssh_e2e
    write_module(e2e.root, "e2e-rogue", "h1", "svc-rogue")
    await e2e.start_worker()
    target = {
        "host": {**ssh_host_entry(sshd_host), "name": "h1"},
        "compose_path": sshd_host.compose_path, "compose_service": "svc-rogue",
        "command": " ".join(compose_up_argv(sshd_host, "svc-rogue")), "execute": True,
    }
    rogue_queue = f"rogue-{uuid.uuid4().hex[:8]}"
    async with Worker(e2e.client, task_queue=rogue_queue, workflows=[RogueApply]):
        said = await e2e.client.execute_workflow(
            "ApplyWorkflow",
            {"queue": e2e.task_queue, "input": {"target": target, "timeout_seconds": 5, "module": "e2e-rogue",
                                                 "source_sha": SHA, "approval": approval()}},
            id=f"rogue-{uuid.uuid4().hex[:8]}", task_queue=rogue_queue,
        )
    assert said.startswith("PolicyViolation:") and "not this worker's" in said, said
    assert sshd_host.calls() == []
    assert e2e.audit() == []


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TEMPORAL_CLI), *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


async def test_inputs_that_used_to_wedge_end_blocked_within_seconds(ssh_e2e, sshd_host):
    e2e = ssh_e2e
    write_module(e2e.root, "e2e-wedge", "h1", "svc-wedge")
    await e2e.start_worker()
    good = json.dumps(request("e2e-wedge", "svc-wedge"))
    deep = json.dumps({"plan": json.loads(good)["plan"], "x": json.loads("[" * 300 + "]" * 300)})
    cases = {
        "two-inputs": ["--input", good, "--input", good],
        "nested-300": ["--input", deep],
        "timeout-1e14": ["--input", json.dumps(request("e2e-wedge", "svc-wedge", approval_timeout_seconds=10**14))],
        "not-json-object": ["--input", '"just a string"'],
    }
    for name, inputs in cases.items():
        wid = f"wedge-{name}-{uuid.uuid4().hex[:6]}"
        started = cli("workflow", "start", "--address", e2e.server.address, "--namespace", NAMESPACE,
                      "--type", "ApplyWorkflow", "--task-queue", e2e.task_queue, "--workflow-id", wid, *inputs)
        assert started.returncode == 0, started.stderr
        out = await e2e.outcome(e2e.client.get_workflow_handle(wid), timeout_s=20)
        assert (out.status, out.error_type) == ("blocked", "PolicyViolation"), (name, out.result)
        assert out.seconds < 10, (name, out.seconds)
    assert sshd_host.calls() == []
    assert [a["status"] for a in e2e.audit()] == ["blocked"] * len(cases)


async def test_a_signal_with_two_arguments_does_not_wedge_the_apply(ssh_e2e, sshd_host):
    e2e = ssh_e2e
    write_module(e2e.root, "e2e-sig", "h1", "svc-sig")
    await e2e.start_worker()
    handle = await e2e.start(request("e2e-sig", "svc-sig", approval_=None))
    await wait_phase(handle, "awaiting_approval")
    sent = cli("workflow", "signal", "--address", e2e.server.address, "--workflow-id", handle.id,
               "--name", "approve", "--input", json.dumps(approval()), "--input", '"extra"')
    assert sent.returncode == 0, sent.stderr
    out = await e2e.outcome(handle, timeout_s=60)
    assert out.status == "applied"


async def test_a_cancel_during_compose_up_waits_for_it_on_the_host_then_rolls_back(ssh_e2e, sshd_host):
    """Compose goes on on the host when the cancel closes the session (a half-applied
    project is worse): the cancel waits for its outcome, here the agent's kill at the
    up timeout, and only then rolls back, so the two never overlap."""
    e2e = ssh_e2e
    up_timeout_s = 8
    write_module(e2e.root, "e2e-cancel", "h1", "svc-cancel", up_timeout_seconds=up_timeout_s)
    sshd_host.set_behaviour("svc-cancel", "hang")
    await e2e.start_worker()
    handle = await e2e.start(request("e2e-cancel", "svc-cancel"))
    assert await eventually(lambda: sshd_host.hang_pid() is not None, 20), "compose up never started"
    up_started = time.monotonic()
    pid = sshd_host.hang_pid()
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as e:
        await e2e.result(handle, timeout_s=up_timeout_s + 30)
    assert isinstance(e.value.cause, CancelledError)
    assert time.monotonic() - up_started >= up_timeout_s - 1, "the cancel did not wait for compose to end"
    assert not process_running(pid), "compose up survived its timeout on the host"
    ups = [c for c in sshd_host.calls() if c[4:5] == ["up"] or c[4:7] == ["-f", "-", "up"]]
    assert [c[4] for c in ups] == ["up", "-f"]  # compose up once, then the rollback
    [line] = e2e.audit()
    assert (line["status"], line["exitCode"]) == ("cancelled", 5)
    status = json.loads(e2e.status_file("e2e-cancel").read_text())
    assert status["status"] == "cancelled" and status["last_failure"]["status"] == "cancelled"
    assert "ROLLBACK" in e2e.all_logs()


async def test_two_modules_of_one_project_take_turns_and_hand_over_at_once(ssh_e2e, sshd_host):
    e2e = ssh_e2e
    for module, service in (("e2e-one", "svc-one"), ("e2e-two", "svc-two")):
        write_module(e2e.root, module, "h1", service, health=QUICK_HEALTH)
    sshd_host.set_behaviour("svc-one", "starting_then_healthy 3")  # holds the lock for ~3 s
    await e2e.start_worker()
    first = await e2e.start(request("e2e-one", "svc-one"))
    await wait_phase(first, "applying", "health_check")
    second = await e2e.start(request("e2e-two", "svc-two"))
    await wait_phase(second, "waiting_for_lock")
    outs = [await e2e.outcome(first), await e2e.outcome(second)]
    assert [o.status for o in outs] == ["applied", "applied"]
    ups = [c for c in sshd_host.calls() if c[4:5] == ["up"]]
    assert [c[-1] for c in ups] == ["svc-one", "svc-two"]
    # the waiter started within a second of the holder's end, not at its 10 s retry
    first_closed = (await first.describe()).close_time
    second_up = next(
        e.event_time.ToDatetime() for e in (await second.fetch_history()).events
        if e.activity_task_scheduled_event_attributes.activity_type.name == "verify_checkout"
    )
    gap = (second_up.replace(tzinfo=first_closed.tzinfo) - first_closed).total_seconds()
    assert gap < 1.0, f"handover took {gap:.2f} s"


async def test_a_reject_while_waiting_for_the_lock_runs_nothing(ssh_e2e, sshd_host):
    e2e = ssh_e2e
    write_module(e2e.root, "e2e-hold", "h1", "svc-hold", health=QUICK_HEALTH)
    write_module(e2e.root, "e2e-queued", "h1", "svc-queued")
    sshd_host.set_behaviour("svc-hold", "starting_then_healthy 3")
    await e2e.start_worker()
    first = await e2e.start(request("e2e-hold", "svc-hold"))
    await wait_phase(first, "applying", "health_check")
    second = await e2e.start(request("e2e-queued", "svc-queued"))
    await wait_phase(second, "waiting_for_lock")
    await second.signal("reject", {"reason": "freeze", "rejected_by": "ops"})
    out = await e2e.outcome(second, timeout_s=20)
    assert out.status == "rejected" and out.seconds < 3
    assert (await e2e.outcome(first)).status == "applied"
    assert [c[-1] for c in sshd_host.calls() if c[4:5] == ["up"]] == ["svc-hold"]


async def test_with_a_key_only_a_signed_approval_reaches_the_host(ssh_e2e, sshd_host, tmp_path):
    e2e = ssh_e2e
    key = b"e2e-approval-key-0123456789abcdef"
    (tmp_path / "approval.key").write_bytes(key + b"\n")
    e2e.extra_env["PLATFORM_APPROVAL_KEY_FILE"] = str(tmp_path / "approval.key")
    write_module(e2e.root, "e2e-signed", "h1", "svc-signed")
    worker = await e2e.start_worker()
    assert "approvals must be signed" in worker.log() and "NOT authenticated" not in worker.log()

    forged = await e2e.apply(request("e2e-signed", "svc-signed"))  # a plain approval, as anyone could send
    assert (forged.status, forged.error_type) == ("approval_mismatch", "ApprovalMismatch")
    assert "not signed" in forged.result["error"] and sshd_host.calls() == []

    good = approval(plan_digest=plan_digest(request("e2e-signed", "svc-signed")["plan"]))
    good["signature"] = sign(key, "e2e-signed", Approval.model_validate(good))
    signed = await e2e.apply(request("e2e-signed", "svc-signed", approval_=good))
    assert signed.status == "applied"


async def test_without_a_key_the_worker_says_approvals_are_not_authenticated(ssh_e2e):
    worker = await ssh_e2e.start_worker()
    assert "approvals are NOT authenticated" in worker.log()
