"""The Temporal dev server killed (-9) and started again on its SQLite file mid-apply.

The real `worker.py` (a subprocess), a real test sshd with the stand-in docker
whose `up` takes as long as a test says (`up_seconds=N`, see SLOW_DOCKER) and
logs when it started and ended, and a dev server started as `worker.py --dev`
starts it (tests/chaos/dev_server.py). The worker is never restarted: it
reconnects by itself.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.client import WorkflowHandle

from tests.chaos.dev_server import RestartableDevServer, sqlite_dev_server  # noqa: F401
from tests.e2e.conftest import (
    E2E,
    HEARTBEAT_TIMEOUT_S,
    activity_attempts,
    compose_up_argv,
    ssh_host_entry,
    write_hosts,
    write_module,
)
from tests.e2e.test_hostile_callers import wait_phase
from tests.platform_files import apply_input, approval, change, plan
from tests.sshd import SshHost, start_sshd, unavailable_reason

# compose up is scheduled with the worker's heartbeat timeout (HEARTBEAT_TIMEOUT_S
# here). A shorter outage is the same scenario as a longer one once it outlasts
# the worker's retries of the result report: the server still times the attempt
# out a heartbeat timeout after the last heartbeat it saw, and retries it.
OUTAGE_S = HEARTBEAT_TIMEOUT_S - 3
SHORT_OUTAGE_S = 3
LONG_OUTAGE_S = HEARTBEAT_TIMEOUT_S + 3

# The stand-in docker behind a wrapper: `up` (also the rollback's) logs its start,
# runs the stand-in, takes `up_seconds=N` from the service's behaviour file, logs its end.
SLOW_DOCKER = '''#!/usr/bin/env python3
import json, os, subprocess, sys, time

args = sys.argv[1:]
state = os.environ.get("STAND_IN_DIR", "")
is_up = "up" in args


def log(event):
    line = json.dumps({"event": event, "pid": os.getpid(), "service": args[-1], "t": time.time()}) + "\\n"
    fd = os.open(os.path.join(state, "up_spans.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, line.encode())
    os.close(fd)


if is_up:
    log("start")
code = subprocess.call([os.path.join(os.path.dirname(os.path.abspath(__file__)), "docker-stand-in"), *args])
if is_up:
    try:
        with open(os.path.join(state, "behaviour", args[-1])) as f:
            words = f.read().split()
    except OSError:
        words = []
    time.sleep(float(next((w.split("=", 1)[1] for w in words if w.startswith("up_seconds=")), 0)))
    log("end")
sys.exit(code)
'''


@pytest.fixture
def slow_host():
    """A test sshd of this test's own on 127.0.0.1 whose docker is SLOW_DOCKER."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    host = start_sshd("127.0.0.1", gate=True)
    try:
        docker = Path(host.bin_dir, "docker")
        docker.rename(Path(host.bin_dir, "docker-stand-in"))
        docker.write_text(SLOW_DOCKER)
        docker.chmod(0o755)
        yield host
    finally:
        host.stop()


@pytest.fixture
async def chaos(sqlite_dev_server, slow_host, tmp_path):  # noqa: F811
    root = tmp_path / "platform"
    (root / "modules").mkdir(parents=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    harness = E2E(server=sqlite_dev_server, root=root, state_dir=tmp_path / "state", logs_dir=logs)  # type: ignore[arg-type]
    write_hosts(root, {"h1": ssh_host_entry(slow_host)})
    try:
        yield harness
    finally:
        problems = []
        for worker in harness.workers:
            if worker.exited_unexpectedly():
                problems.append(f"{worker.log_path.name} exited on its own:\n{worker.log()[-3000:]}")
            code, _ = await worker.terminate()
            if code != 0:
                worker.force_stop()
                problems.append(f"{worker.log_path.name}: exit {code} on SIGTERM\n{worker.log()[-3000:]}")
        assert not problems, "\n".join(problems)


def request(module: str, service: str, **over) -> dict:
    return apply_input(plan(module=module, changes=[change(service)]), **over)


def up_spans(host: SshHost) -> list[tuple[str, float, float]]:
    """(service, start, end) of every stand-in `up`, by start; end is inf for one killed mid-way."""
    path = Path(host.state_dir, "up_spans.jsonl")
    events = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    ends = {e["pid"]: e["t"] for e in events if e["event"] == "end"}
    return sorted(
        ((e["service"], e["t"], ends.get(e["pid"], math.inf)) for e in events if e["event"] == "start"),
        key=lambda span: span[1],
    )


def ups(host: SshHost, service: str) -> int:
    return host.calls().count(compose_up_argv(host, service))


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


async def pending_attempt(handle: WorkflowHandle, activity_type: str) -> int:
    """The attempt the server has scheduled or started of a pending activity (0: none pending)."""
    pending = (await handle.describe()).raw_description.pending_activities
    return max((p.attempt for p in pending if p.activity_type.name == activity_type), default=0)


async def outage(server: RestartableDevServer, seconds: float) -> None:
    server.kill9()
    await asyncio.sleep(seconds)
    await server.start()


async def test_a_server_outage_during_compose_up_runs_it_once(chaos, slow_host, sqlite_dev_server):  # noqa: F811
    write_module(chaos.root, "c-up", "h1", "svc-up")
    slow_host.set_behaviour("svc-up", "succeed up_seconds=4")
    worker = await chaos.start_worker()
    handle = await chaos.start(request("c-up", "svc-up"))
    await until(lambda: len(up_spans(slow_host)) == 1, 30, "compose up started")
    await asyncio.sleep(1)

    # up ends while the server is gone: its result report is lost, and a heartbeat
    # timeout after the last heartbeat it saw, the restarted server retries compose up.
    await outage(sqlite_dev_server, OUTAGE_S)
    out = await chaos.outcome(handle, timeout_s=90)

    assert out.status == "applied", out.result
    assert ups(slow_host, "svc-up") == 1, slow_host.calls()
    # Whether the lost report is retried long enough to get through after the restart
    # depends on timing; when the server retried, the retry took the finished run's result.
    # (The next test forces the retry.)
    if 2 in await activity_attempts(handle, "compose_up"):
        assert "the command already ran on this worker" in worker.log()



async def test_a_server_outage_longer_than_the_heartbeat_timeout_reuses_the_running_up(
    chaos, slow_host, sqlite_dev_server  # noqa: F811
):
    write_module(chaos.root, "c-long", "h1", "svc-long")
    slow_host.set_behaviour("svc-long", f"succeed up_seconds={LONG_OUTAGE_S + 15}")
    worker = await chaos.start_worker()
    handle = await chaos.start(request("c-long", "svc-long"))
    await until(lambda: len(up_spans(slow_host)) == 1, 30, "compose up started")

    # Back after the heartbeat timeout: the server times attempt 1 out at once and
    # starts attempt 2 while attempt 1's up still runs on the worker. The worker is
    # frozen until then, or a heartbeat it retried through the outage may reach the
    # restarted server before its timer does (as on a loaded machine).
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        await outage(sqlite_dev_server, LONG_OUTAGE_S)
        deadline = time.monotonic() + 30
        while await pending_attempt(handle, "compose_up") < 2:
            assert time.monotonic() < deadline, "the restarted server never timed attempt 1 out"
            await asyncio.sleep(0.2)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    out = await chaos.outcome(handle, timeout_s=90)

    assert out.status == "applied", out.result
    assert 2 in await activity_attempts(handle, "compose_up"), "the server never retried compose up"
    assert ups(slow_host, "svc-long") == 1, slow_host.calls()
    assert len(spans := up_spans(slow_host)) == 1 and spans[0][2] < math.inf, spans  # never killed
    assert "an earlier attempt's command still runs on this worker" in worker.log()

async def test_a_server_restart_while_awaiting_approval_takes_the_approval_after(
    chaos, slow_host, sqlite_dev_server  # noqa: F811
):
    write_module(chaos.root, "c-wait", "h1", "svc-wait")
    await chaos.start_worker()
    handle = await chaos.start(request("c-wait", "svc-wait", approval_=None))
    await wait_phase(handle, "awaiting_approval")

    await outage(sqlite_dev_server, SHORT_OUTAGE_S)
    await handle.signal("approve", approval())
    out = await chaos.outcome(handle, timeout_s=60)

    assert out.status == "applied", out.result
    assert ups(slow_host, "svc-wait") == 1


async def test_a_server_restart_while_waiting_for_the_lock_keeps_compose_runs_apart(
    chaos, slow_host, sqlite_dev_server  # noqa: F811
):
    # Two modules in one compose project (the same file): their ups must not overlap.
    write_module(chaos.root, "c-hold", "h1", "svc-hold")
    write_module(chaos.root, "c-queued", "h1", "svc-queued")
    slow_host.set_behaviour("svc-hold", "succeed up_seconds=8")
    await chaos.start_worker()
    first = await chaos.start(request("c-hold", "svc-hold"))
    await until(lambda: len(up_spans(slow_host)) == 1, 30, "the holder's compose up started")
    second = await chaos.start(request("c-queued", "svc-queued"))
    await wait_phase(second, "waiting_for_lock")

    await outage(sqlite_dev_server, SHORT_OUTAGE_S)
    outs = [await chaos.outcome(first, timeout_s=60), await chaos.outcome(second, timeout_s=60)]

    assert [o.status for o in outs] == ["applied", "applied"], [o.result for o in outs]
    spans = up_spans(slow_host)
    assert [s[0] for s in spans] == ["svc-hold", "svc-queued"], spans
    assert spans[0][2] <= spans[1][1], f"compose runs of one project overlapped: {spans}"
