"""SshTransport against a host whose sshd freezes (SIGSTOP) or dies (SIGKILL).

Each test has its own sshd (these faults would break a shared one) and
resumes every process it stopped, even when it fails. A frozen machine is
every sshd process of the host stopped: the listener, and each connection's
privilege-separation monitor and session process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from platformctl.commands import compose_ps, compose_up
from platformctl.transport.base import ConnectFailed
from platformctl.transport.ssh import OPEN_ANSWER_S, SshTransport
from tests.sshd import SshHost, descendants, eventually, serve

CONNECT_TIMEOUT_S = 2.0
SLACK_S = 3.0  # a fresh connection and scheduling on a busy 2-core machine
DROPPED_WITHIN_S = 15  # keepalive's bound for a command running on a frozen host (was ~45-60 s)


@pytest.fixture
def host() -> Iterator[SshHost]:
    yield from serve("127.0.0.1")


@pytest.fixture
async def transport():
    t = SshTransport()
    yield t
    await t.close()


def sshd_processes(host: SshHost) -> list[int]:
    """The listener and every sshd process under it (not the commands they run)."""
    found = [host.process.pid]
    for pid in descendants(host.process.pid):
        try:
            # sshd itself, or OpenSSH >= 9.8's sshd-session (and sshd-auth)
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("sshd"):
                found.append(pid)
        except OSError:
            pass  # gone meanwhile
    return found


def connection_processes(host: SshHost) -> list[int]:
    return [pid for pid in sshd_processes(host) if pid != host.process.pid]


@contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """SIGSTOP `pids` for the block; SIGCONT them afterwards, whatever happens."""
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def ps(host: SshHost):
    return compose_ps(host.compose_path, "redis")


async def test_a_frozen_pooled_connection_is_replaced_within_the_open_bound(host, transport):
    # The connection's own sshd processes hang (a stuck session, a flow a
    # middlebox dropped): the next command must not wait for keepalive but
    # open a fresh connection, the listener being fine.
    config = host.host_config(connect_timeout_seconds=CONNECT_TIMEOUT_S)
    assert (await transport.run(config, ps(host), timeout_s=30)).returncode == 0
    with frozen(connection_processes(host)):
        started = time.monotonic()
        out = await asyncio.wait_for(transport.run(config, ps(host), timeout_s=30), 20)
        elapsed = time.monotonic() - started
    assert out.returncode == 0
    assert OPEN_ANSWER_S <= elapsed < OPEN_ANSWER_S + SLACK_S
    assert host.connection_count() == 2
    assert len(host.calls()) == 2  # the abandoned open ran nothing


async def test_commands_running_on_an_unanswering_connection_are_left_to_finish(host, transport):
    # A host slow to answer is not necessarily dead: what already runs on the
    # connection taken out of the pool finishes there, then it is closed.
    config = host.host_config(connect_timeout_seconds=CONNECT_TIMEOUT_S)
    host.set_behaviour("redis", "slow")  # up -d takes 1 s
    running = asyncio.create_task(transport.run(config, compose_up(host.compose_path, "redis"), timeout_s=30))
    try:
        assert await eventually(lambda: len(host.calls()) == 1)
        old = connection_processes(host)
        with frozen(old):
            out = await asyncio.wait_for(transport.run(config, ps(host), timeout_s=30), 20)
            assert out.returncode == 0  # on a new connection
            await asyncio.sleep(1.2)  # the up ends on the host meanwhile
        up = await asyncio.wait_for(running, 10)
    finally:
        running.cancel()
    assert (up.returncode, up.timed_out) == (0, False)
    assert host.connection_count() == 2
    assert await eventually(lambda: not set(old) & set(connection_processes(host))), "the old connection stayed open"


async def test_a_frozen_host_fails_the_next_command_within_a_bound(host, transport):
    config = host.host_config(connect_timeout_seconds=CONNECT_TIMEOUT_S)
    assert (await transport.run(config, ps(host), timeout_s=30)).returncode == 0
    with frozen(sshd_processes(host)):
        started = time.monotonic()
        with pytest.raises(ConnectFailed) as caught:
            await asyncio.wait_for(transport.run(config, ps(host), timeout_s=30), 20)
        elapsed = time.monotonic() - started
    assert caught.value.retryable
    assert elapsed < OPEN_ANSWER_S + CONNECT_TIMEOUT_S + SLACK_S
    # Thawed, the host serves the next command on a new connection.
    assert (await transport.run(config, ps(host), timeout_s=30)).returncode == 0
    assert len(host.calls()) == 2


async def test_sshd_killed_mid_command_is_a_retryable_failure_and_not_pooled(host, transport):
    config = host.host_config(connect_timeout_seconds=CONNECT_TIMEOUT_S)
    host.set_behaviour("redis", "hang")
    running = asyncio.create_task(transport.run(config, compose_up(host.compose_path, "redis"), timeout_s=60))
    try:
        assert await eventually(lambda: host.hang_pid() is not None)
        started = time.monotonic()
        for pid in sshd_processes(host):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(ConnectFailed, match="may have run") as caught:
            await asyncio.wait_for(running, 20)
        assert time.monotonic() - started < SLACK_S
        assert caught.value.retryable
    finally:
        running.cancel()
    # The dead connection is not reused: the next command connects afresh
    # and is refused (nothing listens any more) at once.
    started = time.monotonic()
    with pytest.raises(ConnectFailed, match="cannot connect"):
        await transport.run(config, ps(host), timeout_s=30)
    assert time.monotonic() - started < SLACK_S


async def test_a_command_running_when_the_host_froze_fails_within_the_keepalive_bound(host, transport):
    config = host.host_config(connect_timeout_seconds=CONNECT_TIMEOUT_S)
    host.set_behaviour("redis", "hang")
    running = asyncio.create_task(transport.run(config, compose_up(host.compose_path, "redis"), timeout_s=120))
    try:
        assert await eventually(lambda: host.hang_pid() is not None)
        with frozen(sshd_processes(host)):
            started = time.monotonic()
            with pytest.raises(ConnectFailed, match="may have run") as caught:
                await asyncio.wait_for(running, DROPPED_WITHIN_S + 10)
            elapsed = time.monotonic() - started
    finally:
        running.cancel()
    assert caught.value.retryable
    assert elapsed < DROPPED_WITHIN_S + SLACK_S
