"""A host's sshd frozen mid-apply (SIGSTOP of the whole host: sshd, its sessions,
the gate and compose), then its sshd killed (SIGKILL) while the rest of the host
thaws, as when sshd crashes on a machine that stays up.

The apply must end within a bound as remote_failed, recorded once: during
compose up with the image rollback reported as failed (the host cannot be
reached); during the health check with no rollback at all, as nothing was seen
to fail. No compose run may be left behind on the host (the gate kills its
command when its session dies); once sshd is back on the same address, port
and keys, the next apply of the project runs promptly and never overlaps the
first one's compose runs. An sshd that comes back within the health timeout
lets the apply end applied, with no rollback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import (
    Lane,
    add_project,
    audit_for,
    compose_running,
    gated_host,
    make_lane,
    overlapping_runs,
    reset_host,
    sleeping,
    spans,
    stop_workers,
)
from tests.chaos.dev_server import RestartableDevServer
from tests.e2e.conftest import write_module
from tests.platform_files import apply_input, change, plan
from tests.sshd import SSHD, SshHost, descendants, eventually, wait_until
from workflows.health_check import HOST_UNOBSERVED

HOST_ADDRESS = "127.0.0.7"
MODULE, SERVICE = "f-faults", "svc-faults"
FROZEN_S = 3  # how long the host stays frozen before its sshd is killed
# Remote retries (2 + 4 + 8 s) for the health poll, then again for the image rollback, on
# a host that refuses connections: ~30 s plus the steps themselves; for compose up, its
# retries, the 30 s until it asks the agent again, then the rollback and its health check.
ENDS_WITHIN_S = 90
NEXT_APPLY_WITHIN_S = 20  # stable window 2 s, polls every second
DOWN_S = 20  # sshd down during a health check with a 60 s timeout
UP_TIMEOUT_S = 10  # the hung compose up's, which the agent enforces once sshd is gone


@pytest.fixture(scope="module")
def host() -> Any:
    yield from gated_host(HOST_ADDRESS)


@pytest.fixture
async def lane(chaos_server: RestartableDevServer, host: SshHost, tmp_path: Path) -> AsyncIterator[Lane]:
    reset_host(host)
    lane = make_lane(chaos_server, tmp_path, "sshd-faults", host)
    file = add_project(host, "p-faults", [SERVICE])
    write_module(lane.root, MODULE, "h1", SERVICE, compose_file=file, up_timeout_seconds=60,
                 health={"stable_seconds": 2, "timeout_seconds": 30, "poll_seconds": 1})
    try:
        yield lane
    finally:
        await stop_workers([lane])
        thaw(host)
        if host.process.poll() is not None:
            restart_sshd(host)


def host_processes(host: SshHost) -> list[int]:
    return [host.process.pid, *descendants(host.process.pid)]


def is_sshd(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/exe") == SSHD
    except OSError:
        return False


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_sshd(host: SshHost, frozen: list[int]) -> None:
    """sshd and its session processes die; the host's other processes (gate, compose) thaw."""
    sshd = [pid for pid in frozen if is_sshd(pid)]
    signal_all(sshd, signal.SIGKILL)
    host.process.wait(timeout=10)
    assert wait_until(lambda: not any(os.path.exists(f"/proc/{pid}/exe") and is_sshd(pid) for pid in sshd), 5)
    signal_all([pid for pid in frozen if pid not in sshd], signal.SIGCONT)


def thaw(host: SshHost) -> None:
    if host.process.poll() is None:
        signal_all(host_processes(host), signal.SIGCONT)


def restart_sshd(host: SshHost) -> None:
    """The same sshd command line: same address, port, host key and authorized keys."""
    host.process = subprocess.Popen(
        host.process.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex((host.address, host.port)) == 0

    assert wait_until(listening, 10), f"sshd did not come back on {host.address}:{host.port}"


def request() -> dict:
    return apply_input(plan(module=MODULE, changes=[change(SERVICE)]))


def calls_of(host: SshHost, subcommand: str) -> int:
    return sum(1 for c in host.calls() if c[4:5] == [subcommand] and c[-1] == SERVICE)


@pytest.mark.parametrize("during", ["up", "health"])
async def test_sshd_stopped_then_killed_mid_apply(lane: Lane, host: SshHost, during: str) -> None:
    host.set_behaviour(SERVICE, ("hang" if during == "up" else "succeed") + " spans=on")
    if during == "up":
        write_module(lane.root, MODULE, "h1", SERVICE, compose_file=add_project(host, "p-faults", [SERVICE]),
                     up_timeout_seconds=UP_TIMEOUT_S, health={"stable_seconds": 2, "timeout_seconds": 30,
                                                              "poll_seconds": 1})
    await lane.start_worker()
    handle = await lane.start(request())
    if during == "up":
        assert await eventually(lambda: calls_of(host, "up") == 1, 60), host.calls()
    else:
        assert await eventually(lambda: calls_of(host, "ps") >= 1, 60), host.calls()
        deadline = time.monotonic() + 10
        while not await sleeping(handle):  # between two polls: the next one meets the frozen host
            assert time.monotonic() < deadline, "the health check never slept between two polls"

    started = time.monotonic()
    frozen = host_processes(host)
    signal_all(frozen, signal.SIGSTOP)
    try:
        await asyncio.sleep(FROZEN_S)
    finally:
        kill_sshd(host, frozen)
    if during == "up":  # compose outlives the session (the agent runs it detached) until the agent's timeout
        assert compose_running(host)
    assert await eventually(lambda: not compose_running(host), UP_TIMEOUT_S + 5), compose_running(host)
    if during == "up":
        # Compose up's retries ran out on a host that did not answer: the apply asks the agent
        # again every 30 s, and takes the outcome it recorded once the host is back.
        restart_sshd(host)
    out = await lane.outcome(handle, timeout_s=120)
    elapsed = time.monotonic() - started

    assert (out.status, out.result["exitCode"]) == ("remote_failed", 4), out.result
    rollback = out.result["rollback"]
    if during == "up":
        assert out.result["error"] == f"compose up still running after {UP_TIMEOUT_S} seconds: killed", out.result
        assert rollback is not None and rollback["image"]["outcome"] == "restored", rollback
    else:  # polls that reach nobody are no verdict: the release may be healthy
        assert out.result["error"] == HOST_UNOBSERVED
        assert rollback is not None and (rollback["action"], rollback["image"]) == ("record", None), rollback
    assert elapsed < ENDS_WITHIN_S, f"ended {elapsed:.1f} s after the host froze"
    assert [a["status"] for a in audit_for(lane, handle.id)] == ["remote_failed"]
    status = json.loads(lane.status_file(MODULE).read_text())
    assert status["status"] == "remote_failed" and status["last_failure"]["workflow_id"] == handle.id
    assert not compose_running(host)

    # The host is back: the next apply of the project runs promptly and alone.
    if during == "health":
        restart_sshd(host)
    host.set_behaviour(SERVICE, "succeed spans=on")
    again = await lane.apply(request(), timeout_s=60)
    assert again.status == "applied", again.result
    assert again.seconds < NEXT_APPLY_WITHIN_S, f"the next apply took {again.seconds:.1f} s"
    assert [a["status"] for a in audit_for(lane, again.handle.id)] == ["applied"]
    assert overlapping_runs(host) == []
    # The hung up was killed, so it never finished: its rollback's up and the next apply's did.
    assert len(spans(host)) == 2
    print(f"frozen during {during}: {out.status} {elapsed:.1f} s after the freeze, next apply {again.seconds:.1f} s")


async def test_sshd_down_for_a_while_during_the_health_check_does_not_roll_back(lane: Lane, host: SshHost) -> None:
    """Longer than one poll's retries (2 + 4 + 8 s on a refused connection), which used to
    end a healthy release remote_failed and roll it back; shorter than the health timeout."""
    write_module(lane.root, MODULE, "h1", SERVICE, compose_file=add_project(host, "p-faults", [SERVICE]),
                 health={"stable_seconds": 2, "timeout_seconds": 60, "poll_seconds": 1})
    host.set_behaviour(SERVICE, "succeed spans=on")
    await lane.start_worker()
    handle = await lane.start(request())
    assert await eventually(lambda: calls_of(host, "ps") >= 1, 60), host.calls()
    kill_sshd(host, host_processes(host))
    await asyncio.sleep(DOWN_S)
    restart_sshd(host)

    out = await lane.outcome(handle, timeout_s=90)

    assert out.status == "applied", out.result
    assert out.result["rollback"] is None and calls_of(host, "up") == 1
    assert [a["status"] for a in audit_for(lane, handle.id)] == ["applied"]
