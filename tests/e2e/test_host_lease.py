"""The project lease on the host, end to end: real dev server, two real workers,
the real sshd and host agent. Whatever the control plane is told, a second
apply of the project never changes it while the first is being judged."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

from tests.e2e.conftest import ssh_host_entry, write_hosts, write_module
from tests.e2e.test_ssh_apply import request
from tests.sshd import SshHost
from workflows.project_lock import RELEASE, project_lock_id

STABLE_S = 8


def up_spans(host: SshHost) -> dict[str, dict]:
    path = Path(host.state_dir, "spans.jsonl")
    return {s["service"]: s for s in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


async def test_a_forged_lock_release_during_a_health_check_never_lets_the_next_apply_in(e2e, sshd_host):
    """The red team's overlap: anyone who may signal releases the control plane's lock while
    the first apply's health check runs. The next apply gets that lock, but the host answers
    its compose up `busy` until the first apply has its outcome and frees the lease."""
    write_hosts(e2e.root, {"h1": ssh_host_entry(sshd_host)})
    health = {"stable_seconds": STABLE_S, "timeout_seconds": 30, "poll_seconds": 1}
    for module, service in (("lease-a", "svc-la"), ("lease-b", "svc-lb")):  # one compose project: `core`
        write_module(e2e.root, module, "h1", service, health=health)
        sshd_host.set_behaviour(service, "succeed spans=on")
    await e2e.start_worker()
    await e2e.start_worker()  # the second apply's steps may run on either: nothing is per worker

    first = await e2e.start(request("lease-a", "svc-la"))
    deadline = time.monotonic() + 60
    while (await first.query("status"))["phase"] != "health_check":
        assert time.monotonic() < deadline, "the first apply never reached its health check"
        await asyncio.sleep(0.2)
    await e2e.client.get_workflow_handle(project_lock_id("h1", "core")).signal(RELEASE)
    second = await e2e.start(request("lease-b", "svc-lb"))

    a, b = await asyncio.gather(e2e.outcome(first), e2e.outcome(second))
    assert (a.status, b.status) == ("applied", "applied"), (a.result, b.result)
    spans = up_spans(sshd_host)
    # Without the lease the second compose up ran a second or two into the first one's window.
    assert spans["svc-lb"]["start"] >= spans["svc-la"]["end"] + STABLE_S, spans
    assert a.result["health"]["observed_s"] >= STABLE_S  # judged on a project nobody else changed


async def test_a_frozen_worker_mid_compose_up_never_gets_the_project_run_twice(e2e, sshd_host):
    """SIGSTOP the worker while its compose up runs on the host: the server gives its
    attempt up at the heartbeat timeout and the second worker asks the agent again with
    the same run id (the retry may also land on the frozen worker, whose open poll the
    server picks). The agent answers `busy` while the first compose runs, then its
    recorded outcome: compose up ran once, and the apply goes on from there."""
    write_hosts(e2e.root, {"h1": ssh_host_entry(sshd_host)})
    write_module(e2e.root, "frozen", "h1", "svc-frozen", health={"stable_seconds": 1, "timeout_seconds": 20,
                                                                 "poll_seconds": 1})  # fmt: skip
    sshd_host.set_behaviour("svc-frozen", "hold spans=on")  # compose up runs until `release` exists
    first = await e2e.start_worker()
    handle = await e2e.start(request("frozen", "svc-frozen"))
    hang_pid = Path(sshd_host.state_dir, "hang.pid")
    deadline = time.monotonic() + 60
    while not hang_pid.exists():
        assert time.monotonic() < deadline, "compose up never started on the host"
        await asyncio.sleep(0.1)
    await e2e.start_worker()
    first.proc.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 60
        while not await compose_up_retried(handle):  # the frozen attempt timed out; the other worker asks
            assert time.monotonic() < deadline, "compose up was never retried"
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # the retry's first ask: busy, the first compose up still runs
        assert frozen_ups(sshd_host) == []
    finally:
        Path(sshd_host.state_dir, "release").touch()
        # Thawed, it finishes its stale attempt (the server refuses the result) and polls
        # again; frozen, its open polls would swallow the next tasks until they time out.
        first.proc.send_signal(signal.SIGCONT)
    out = await e2e.outcome(handle)
    assert out.status == "applied", out.result
    assert len(frozen_ups(sshd_host)) == 1  # one compose up, whoever asked
    assert [argv for argv in sshd_host.calls() if argv[4:5] == ["up"]] == [
        ["docker", "compose", "-f", sshd_host.compose_path, "up", "-d", "svc-frozen"]
    ]


async def compose_up_retried(handle) -> bool:
    pending = (await handle.describe()).raw_description.pending_activities
    return any(p.activity_type.name == "compose_up" and p.attempt >= 2 for p in pending)


def frozen_ups(host: SshHost) -> list[dict]:
    path = Path(host.state_dir, "spans.jsonl")  # not reset between tests: other services' spans too
    spans = map(json.loads, path.read_text().splitlines()) if path.exists() else []
    return [span for span in spans if span["service"] == "svc-frozen"]
