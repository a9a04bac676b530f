"""`kill -9` of the real worker at every step boundary of an apply, then a new worker.

One campaign runs every case at once, so the file costs one recovery wait
(Temporal notices a dead worker only at a timeout: the heartbeat timeout, for
a remote step; HEARTBEAT_TIMEOUT_S in tests/e2e/conftest.py) instead of one per
step. A step that reads a platform file or the audit log blocks its worker's
event loop while held, so each of those gets its own lane (platform root, task
queue, worker); the other cases share one.

How each case holds its worker at the step (never by ActivityTaskScheduled
events: the quick local checks may run as local activities):
- validate, guard, allowlist: the file the step reads first (policy.yaml,
  hosts.yaml, hosts.yaml the second time) is a named pipe nobody writes;
- approval: the status query says awaiting_approval; the approval is sent while
  no worker runs;
- lock: the query says waiting_for_lock behind the `up` case, which holds its
  project's lock across the kill;
- up: the stand-in's `up` holds (calls.jsonl shows it started); the kill takes
  the SSH connection with it, compose goes on under the host agent, and once it
  is let finish the new worker's retry gets its outcome: never a second run;
- health: killed between two polls (calls.jsonl shows the first `ps`), once
  with a health timeout longer than the outage and once shorter;
- persist: the test holds the audit log's flock, so the worker stops right after
  the status file is written; then, with the Temporal server frozen, lets the
  line be written and kills the worker before it can report the step done;
- rollback: the stand-in's image rollback holds (runs on, detached under the agent) after an unhealthy apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from tests.chaos.conftest import (
    FifoHold,
    add_project,
    audit_for,
    compose_running,
    gated_host,
    make_lane,
    overlapping_runs,
    paused,
    reset_host,
    sleeping,
    spans,
    stop_workers,
    wait_for_phase,
)
from tests.chaos.dev_server import RestartableDevServer
from tests.conftest import Outcome
from tests.e2e.conftest import E2E, activity_attempts, write_module
from tests.platform_files import apply_input, approval, change, plan
from tests.sshd import SshHost, eventually

HOST_ADDRESS = "127.0.0.6"
STEPS = [
    "validate", "approval", "guard", "allowlist", "lock", "up", "health", "health_outage", "persist", "rollback",
]
OUTCOME_TIMEOUT_S = 120
# flock(2)'s number, as /proc/<pid>/task/<tid>/syscall shows a call the thread is blocked in.
FLOCK_SYSCALL = {"x86_64": "73", "aarch64": "32"}[platform.machine()]
POLICY = "sacred_paths: [secrets/]\n"


@pytest.fixture(scope="module")
def host() -> Any:
    yield from gated_host(HOST_ADDRESS)


@dataclass
class Case:
    step: str
    module: str
    service: str
    expected: str
    lane: E2E | None = None
    handle: WorkflowHandle | None = None
    outcome: Outcome | None = None
    error: str | None = None
    left_running: list[int] = field(default_factory=list)  # compose runs still alive 5 s after the kill
    polls_before_kill: int | None = None


@dataclass
class Campaign:
    host: SshHost
    cases: dict[str, Case]
    seconds: float


def compose_file(host: SshHost, case: Case) -> str:
    """The case's own compose project."""
    return add_project(host, f"p-{case.module}", [case.service])


def request(case: Case, *, approved: bool = True) -> dict:
    return apply_input(plan(module=case.module, changes=[change(case.service)]), "default" if approved else None)


def rollback_argv(host: SshHost, service: str, file: str) -> list[str]:
    return ["docker", "compose", "-f", f"{host.remote_root}/{file}", "-f", "-", "up", "-d", "--no-deps",
            "--no-build", "--pull", "never", service]


def ps_calls(host: SshHost, service: str) -> int:
    return sum(1 for c in host.calls() if c[4:5] == ["ps"] and c[-1] == service)


async def kill_and_check(lane: E2E, host: SshHost, cases: list[Case]) -> None:
    """kill -9 the lane's worker; note any compose run it leaves behind on the host."""
    lane.workers[-1].kill9()
    services = [case.service for case in cases]
    await eventually(lambda: not compose_running(host, services), 5)
    for case in cases:
        case.left_running = compose_running(host, [case.service])


async def finish(lane: E2E, cases: list[Case]) -> None:
    await lane.start_worker()
    outcomes = await asyncio.gather(
        *(lane.outcome(c.handle, timeout_s=OUTCOME_TIMEOUT_S) for c in cases if c.handle), return_exceptions=True
    )
    for case, out in zip([c for c in cases if c.handle], outcomes, strict=True):
        if isinstance(out, BaseException):
            case.error = f"{type(out).__name__}: {out}"
        else:
            case.outcome = out


# ---- lanes --------------------------------------------------------------------


async def main_lane(lane: E2E, host: SshHost, cases: dict[str, Case]) -> None:
    """approval, lock, up, health, health_outage, rollback: holds that leave the worker's loop free."""
    ap, lock, up, health, outage, rb = (cases[s] for s in ("approval", "lock", "up", "health", "health_outage",
                                                           "rollback"))
    shared = add_project(host, "p-shared", [up.service, lock.service])  # `lock` waits for `up`: one project
    write_module(lane.root, ap.module, "h1", ap.service, compose_file=compose_file(host, ap))
    write_module(lane.root, up.module, "h1", up.service, compose_file=shared)
    write_module(lane.root, lock.module, "h1", lock.service, compose_file=shared)
    write_module(lane.root, health.module, "h1", health.service, compose_file=compose_file(host, health),
                 health={"stable_seconds": 2, "timeout_seconds": 30, "poll_seconds": 1})
    # Polls at 0 s (starting), 2 s (healthy), 4 s (stable: applied). Killed after the first,
    # the outage (>= the 5 s sticky timeout, then a worker start) outlasts the health timeout.
    write_module(lane.root, outage.module, "h1", outage.service, compose_file=compose_file(host, outage),
                 health={"stable_seconds": 2, "timeout_seconds": 5, "poll_seconds": 2})
    rb_file = compose_file(host, rb)
    # The rollback's up (killed after up_timeout_seconds) must still run when the worker is killed.
    write_module(lane.root, rb.module, "h1", rb.service, compose_file=rb_file, up_timeout_seconds=300,
                 health={"stable_seconds": 1, "timeout_seconds": 3, "poll_seconds": 1})
    for case, behaviour in ((ap, "succeed"), (up, "hold"), (lock, "succeed"), (rb, "unhealthy rollback=hold"),
                            (health, "starting_then_healthy 2"), (outage, "starting_then_healthy 1")):
        host.set_behaviour(case.service, f"{behaviour} spans=on")
    await lane.start_worker()

    ap.handle = await lane.start(request(ap, approved=False))
    up.handle = await lane.start(request(up))
    rb.handle = await lane.start(request(rb))
    up_argv = ["docker", "compose", "-f", f"{host.remote_root}/{shared}", "up", "-d", up.service]
    assert await eventually(lambda: up_argv in host.calls(), 60), host.calls()
    lock.handle = await lane.start(request(lock))
    await wait_for_phase(lock.handle, "waiting_for_lock")
    await wait_for_phase(ap.handle, "awaiting_approval")
    assert await eventually(lambda: rollback_argv(host, rb.service, rb_file) in host.calls(), 60), host.calls()
    health.handle = await lane.start(request(health))
    outage.handle = await lane.start(request(outage))
    assert await eventually(lambda: ps_calls(host, health.service) and ps_calls(host, outage.service), 60)
    deadline = time.monotonic() + 10
    while not (await sleeping(health.handle) and await sleeping(outage.handle)):  # no poll in flight
        assert time.monotonic() < deadline, "the health checks never slept between two polls"
    outage.polls_before_kill = ps_calls(host, outage.service)

    await kill_and_check(lane, host, list(cases.values()))
    Path(host.state_dir, "release").touch()  # the held compose up and rollback (still running on the host) end
    host.set_behaviour(rb.service, "unhealthy spans=on")  # the rollback's up now succeeds
    await ap.handle.signal("approve", approval())  # while no worker runs
    await finish(lane, [ap, up, rb, lock, health, outage])


async def fifo_lane(lane: E2E, host: SshHost, case: Case) -> None:
    """validate (policy.yaml), guard (hosts.yaml), allowlist (hosts.yaml, second read)."""
    write_module(lane.root, case.module, "h1", case.service, compose_file=compose_file(host, case))
    host.set_behaviour(case.service, "succeed spans=on")
    name = "policy.yaml" if case.step == "validate" else "hosts.yaml"
    path = lane.root / name
    content = POLICY if case.step == "validate" else path.read_text()
    hold = FifoHold(path, content)
    try:
        await lane.start_worker()
        case.handle = await lane.start(request(case))
        await hold.wait_reader()
        if case.step == "allowlist":  # the guard reads hosts.yaml first
            hold.let_through()
            await hold.wait_reader()
        await kill_and_check(lane, host, [case])
    finally:
        hold.restore()
    await finish(lane, [case])


def blocked_in_flock(pid: int) -> bool:
    for task in Path("/proc", str(pid), "task").iterdir():
        with contextlib.suppress(OSError):
            if Path(task, "syscall").read_text().split()[0] == FLOCK_SYSCALL:
                return True
    return False


async def persist_lane(lane: E2E, host: SshHost, server: RestartableDevServer, case: Case) -> None:
    write_module(lane.root, case.module, "h1", case.service, compose_file=compose_file(host, case),
                 health={"stable_seconds": 1, "timeout_seconds": 10, "poll_seconds": 1})
    host.set_behaviour(case.service, "succeed spans=on")
    worker = await lane.start_worker()
    lane.state_dir.mkdir(parents=True, exist_ok=True)
    audit = os.open(lane.state_dir / "audit.jsonl", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        fcntl.flock(audit, fcntl.LOCK_EX)
        case.handle = await lane.start(request(case))
        status = lane.status_file(case.module)
        assert await eventually(
            lambda: status.exists() and json.loads(status.read_text())["workflow_id"] == case.handle.id, 60
        ), "the status file was never written"
        assert await eventually(lambda: blocked_in_flock(worker.pid), 10), "the worker never waited for the audit lock"
        with paused(server):  # the worker can write the line but cannot report the step done
            fcntl.flock(audit, fcntl.LOCK_UN)
            written = await eventually(lambda: audit_for(lane, case.handle.id), 10)
            await kill_and_check(lane, host, [case])
        assert written, "the audit line was never written"
    finally:
        os.close(audit)
    await finish(lane, [case])


# ---- the campaign ----------------------------------------------------------------


@pytest.fixture(scope="module")
async def campaign(chaos_server: RestartableDevServer, host: SshHost, tmp_path_factory) -> Any:
    reset_host(host)
    base = tmp_path_factory.mktemp("worker-kill")
    cases = {
        step: Case(step, f"k-{step.replace('_', '-')}", f"svc-{step}", "unhealthy" if step == "rollback" else "applied")
        for step in STEPS
    }
    main_steps = ("approval", "lock", "up", "health", "health_outage", "rollback")
    lanes: dict[str, E2E] = {"main": make_lane(chaos_server, base, "main", host)}
    for step in STEPS:
        if step not in main_steps:
            lanes[step] = make_lane(chaos_server, base, step, host)
        cases[step].lane = lanes["main" if step in main_steps else step]

    async def run(name: str) -> None:
        lane = lanes[name]
        try:
            if name == "main":
                await main_lane(lane, host, {s: cases[s] for s in main_steps})
            elif name == "persist":
                await persist_lane(lane, host, chaos_server, cases[name])
            else:
                await fifo_lane(lane, host, cases[name])
        except BaseException as e:  # reported by the lane's own cases, not by the first test to run
            for case in cases.values():
                if case.lane is lane and case.outcome is None and case.error is None:
                    case.error = f"lane {name} failed: {type(e).__name__}: {e}\n{lane.all_logs()[-3000:]}"

    started = time.monotonic()
    try:
        await asyncio.gather(*(run(name) for name in lanes))
        yield Campaign(host, cases, time.monotonic() - started)
    finally:
        await stop_workers(list(lanes.values()))


@pytest.mark.parametrize("step", STEPS)
async def test_kill_9_at_each_step_then_a_new_worker_finishes(campaign: Campaign, step: str) -> None:
    case = campaign.cases[step]
    host = campaign.host
    assert case.error is None, case.error
    assert case.outcome is not None and case.handle is not None and case.lane is not None
    out = case.outcome
    if step == "health_outage":
        assert case.polls_before_kill == 1, "killed too late to see the outage outlast the health timeout"
    assert out.status == case.expected, f"{step}: {out.status}: {out.result['error']}; {out.result['rollback']}"
    # Recorded once: one audit line, and the status file names this apply.
    lines = audit_for(case.lane, case.handle.id)
    assert [line["status"] for line in lines] == [case.expected], f"{step}: audit lines {lines}"
    status = json.loads(case.lane.status_file(case.module).read_text())
    assert status["status"] == case.expected
    # Docker compose never ran against itself: compose up and the rollback outlived the worker
    # under the host agent, no finished runs overlapped.
    if step in ("up", "rollback"):
        assert case.left_running, f"{step} did not outlive the worker (it runs detached under the agent)"
    else:
        assert case.left_running == [], f"{step}: compose runs left running after the kill: {case.left_running}"
    assert overlapping_runs(host) == []
    ups = [s for s in spans(host) if s["service"] == case.service]
    if step == "rollback":
        assert out.result["rollback"]["image"]["outcome"] == "unhealthy", out.result["rollback"]
        assert await activity_attempts(case.handle, "compose_rollback") == [2]
        assert len(ups) == 2, ups  # compose up, then the rollback once: its second attempt got the recorded outcome
    else:
        assert len(ups) == 1, ups  # one compose up (the `up` case's too, though its worker was killed)
    if step == "up":
        assert await activity_attempts(case.handle, "compose_up") == [2]  # the retry got the recorded outcome
        assert sum(1 for c in host.calls() if c[4:5] == ["up"] and c[-1] == case.service) == 1
    if step == "lock":
        (holder,) = [s for s in spans(host) if s["service"] == campaign.cases["up"].service]
        assert ups[0]["start"] >= holder["end"], "the waiting apply ran compose before the holder was done"
    print(f"{step}: {out.status} {out.seconds:.1f} s after the new worker started (campaign {campaign.seconds:.0f} s)")
