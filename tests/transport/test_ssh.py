"""SshTransport against a real OpenSSH sshd (tests/sshd.py) and the stand-in docker."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest

from platformctl.commands import RemoteCommand, compose_ps, compose_up, git_head
from platformctl.transport.base import AuthenticationFailed, ConnectFailed, HostKeyMismatch
from platformctl.transport.ssh import SshTransport
from tests.sshd import SshHost, eventually, known_hosts_pattern, make_keypair, process_running


@pytest.fixture
async def transport():
    t = SshTransport()
    yield t
    await t.close()


def up(host: SshHost, service: str = "redis"):
    return compose_up(host.compose_path, service)


def connection_attempts(host: SshHost) -> int:
    return Path(host.log_path).read_text().count("Connection from ")


async def test_success_runs_exactly_the_argv(sshd_host, transport):
    command = up(sshd_host)
    out = await transport.run(sshd_host.host_config(), command, timeout_s=10)
    assert (out.returncode, out.timed_out) == (0, False)
    assert "Container core-redis-1  Started" in out.stderr
    assert sshd_host.calls() == [list(command.argv)]
    assert out.duration_s > 0


async def test_stdout_of_ps_and_git(sshd_host, transport):
    sshd_host.set_head_sha("f" * 40)
    config = sshd_host.host_config()
    ps = await transport.run(config, compose_ps(sshd_host.compose_path, "redis"), timeout_s=10)
    container = json.loads(ps.stdout)
    assert (container["Service"], container["State"], container["Health"]) == ("redis", "running", "healthy")
    head = await transport.run(config, git_head(sshd_host.remote_root), timeout_s=10)
    assert (head.returncode, head.stdout) == (0, "f" * 40 + "\n")


async def test_failure_returns_code_and_stderr(sshd_host, transport):
    sshd_host.set_behaviour("redis", "fail")
    out = await transport.run(sshd_host.host_config(), up(sshd_host), timeout_s=10)
    assert out.returncode == 1
    assert "stand-in failure starting core-redis-1" in out.stderr
    assert not out.timed_out


async def test_timeout_kills_the_remote_process(sshd_host, transport):
    sshd_host.set_behaviour("redis", "hang")
    started = time.monotonic()
    out = await transport.run(sshd_host.host_config(), up(sshd_host), timeout_s=1)
    elapsed = time.monotonic() - started
    assert (out.returncode, out.timed_out) == (None, True)
    assert 1 <= elapsed < 3
    assert out.stderr == " Container core-redis-1  Creating\n"  # output up to the kill is kept
    pid = sshd_host.hang_pid()
    assert pid is not None
    assert await eventually(lambda: not process_running(pid)), f"remote pid {pid} survived the timeout"
    # The connection survives a killed command.
    again = await transport.run(sshd_host.host_config(), compose_ps(sshd_host.compose_path, "redis"), timeout_s=10)
    assert again.returncode == 0
    assert sshd_host.connection_count() == 1


async def test_cancelling_a_run_kills_the_remote_process(sshd_host, transport):
    sshd_host.set_behaviour("redis", "hang")
    running = asyncio.create_task(transport.run(sshd_host.host_config(), up(sshd_host), timeout_s=30))
    assert await eventually(lambda: sshd_host.hang_pid() is not None)
    pid = sshd_host.hang_pid()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await eventually(lambda: not process_running(pid)), f"remote pid {pid} survived the cancellation"


async def test_output_is_capped_keeping_the_tail(sshd_host):
    sshd_host.set_behaviour("redis", "secrets")
    transport = SshTransport(output_cap_bytes=64)
    try:
        out = await transport.run(sshd_host.host_config(), up(sshd_host), timeout_s=10)
    finally:
        await transport.close()
    assert out.returncode == 0
    marker, _, tail = out.stdout.partition("\n")
    assert marker.startswith("[... ") and marker.endswith(" bytes dropped ...]")
    assert len(tail.encode()) == 64
    assert tail.endswith("ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8\n")


@pytest.mark.parametrize("pin", ["other_key", "other_host", "empty"])
async def test_unpinned_host_key_is_refused_before_anything_runs(sshd_host, transport, tmp_path, pin):
    other_key = make_keypair(tmp_path / "other")
    known_hosts = {
        "other_key": f"{known_hosts_pattern(sshd_host.address, sshd_host.port)} {other_key}",
        "other_host": sshd_host.host_key_line.replace(sshd_host.address, "192.0.2.1"),
        "empty": "",
    }[pin]
    with pytest.raises(HostKeyMismatch) as caught:
        await transport.run(sshd_host.host_config(known_hosts=known_hosts), up(sshd_host), timeout_s=10)
    assert sshd_host.calls() == []
    assert sshd_host.connection_count() == 0
    assert "AAAA" not in str(caught.value)
    if pin == "empty":
        assert connection_attempts(sshd_host) == 0


async def test_known_hosts_may_be_a_file(sshd_host, transport, tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text(sshd_host.host_key_line + "\n")
    out = await transport.run(sshd_host.host_config(known_hosts=str(path)), up(sshd_host), timeout_s=10)
    assert out.returncode == 0


async def test_missing_known_hosts_file_fails_closed(sshd_host, transport, tmp_path):
    with pytest.raises(HostKeyMismatch):
        await transport.run(
            sshd_host.host_config(known_hosts=str(tmp_path / "absent")), up(sshd_host), timeout_s=10
        )
    assert connection_attempts(sshd_host) == 0


async def test_a_changed_pin_is_not_served_by_the_pooled_connection(sshd_host, transport, tmp_path):
    assert (await transport.run(sshd_host.host_config(), up(sshd_host), timeout_s=10)).returncode == 0
    wrong = f"{known_hosts_pattern(sshd_host.address, sshd_host.port)} {make_keypair(tmp_path / 'k')}"
    with pytest.raises(HostKeyMismatch):
        await transport.run(sshd_host.host_config(known_hosts=wrong), up(sshd_host), timeout_s=10)
    assert len(sshd_host.calls()) == 1


async def test_wrong_client_key_is_refused(sshd_host, transport, tmp_path):
    make_keypair(tmp_path / "stranger")
    with pytest.raises(AuthenticationFailed) as caught:
        await transport.run(
            sshd_host.host_config(client_key=str(tmp_path / "stranger")), up(sshd_host), timeout_s=10
        )
    assert sshd_host.calls() == []
    assert sshd_host.connection_count() == 0
    assert not caught.value.retryable
    assert "PRIVATE KEY" not in str(caught.value) and "AAAA" not in str(caught.value)


@pytest.mark.parametrize("client_key", ["", "/nonexistent/key"])
async def test_unusable_client_key_config_is_refused_before_connecting(sshd_host, transport, client_key):
    with pytest.raises(AuthenticationFailed):
        await transport.run(sshd_host.host_config(client_key=client_key), up(sshd_host), timeout_s=10)
    assert connection_attempts(sshd_host) == 0


async def test_root_is_refused_before_connecting(sshd_host, transport):
    with pytest.raises(AuthenticationFailed, match="root"):
        await transport.run(sshd_host.host_config(user="root"), up(sshd_host), timeout_s=10)
    assert connection_attempts(sshd_host) == 0


async def test_closed_port_fails_fast(sshd_host, transport):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ConnectFailed) as caught:
        await transport.run(sshd_host.host_config(port=closed_port), up(sshd_host), timeout_s=10)
    assert time.monotonic() - started < 1
    assert caught.value.retryable


async def test_one_connection_serves_concurrent_and_sequential_commands(sshd_host, transport):
    config = sshd_host.host_config()
    ps = compose_ps(sshd_host.compose_path, "redis")
    # Concurrent first calls must not race each other into several connections.
    outs = await asyncio.gather(*(transport.run(config, ps, timeout_s=10) for _ in range(10)))
    for _ in range(5):
        outs.append(await transport.run(config, ps, timeout_s=10))
    assert [o.returncode for o in outs] == [0] * 15
    assert len(sshd_host.calls()) == 15
    assert sshd_host.connection_count() == 1


async def test_channels_are_bounded_below_max_sessions(sshd_host, transport):
    # 12 one-second commands at once: OpenSSH refuses an 11th channel, so all of
    # them succeeding in two waves shows the per-connection bound (8) at work.
    sshd_host.set_behaviour("redis", "slow")
    started = time.monotonic()
    outs = await asyncio.gather(
        *(transport.run(sshd_host.host_config(), up(sshd_host), timeout_s=10) for _ in range(12))
    )
    assert [o.returncode for o in outs] == [0] * 12
    assert 2 <= time.monotonic() - started < 5
    assert sshd_host.connection_count() == 1


async def test_a_refused_channel_is_retried(sshd_host):
    # More channels than sshd's MaxSessions (10): the surplus opens are refused
    # ("no more sessions") and must be retried as sessions free up.
    transport = SshTransport(max_channels=16)
    try:
        outs = await asyncio.gather(
            *(
                transport.run(sshd_host.host_config(), compose_ps(sshd_host.compose_path, "redis"), timeout_s=10)
                for _ in range(16)
            )
        )
    finally:
        await transport.close()
    assert [o.returncode for o in outs] == [0] * 16
    assert "no more sessions" in Path(sshd_host.log_path).read_text()


@pytest.mark.parametrize("pause_s", [0, 0.3], ids=["drop-not-yet-noticed", "drop-noticed"])
async def test_reconnects_after_the_connection_dropped(sshd_host, transport, pause_s):
    config = sshd_host.host_config()
    assert (await transport.run(config, up(sshd_host), timeout_s=10)).returncode == 0
    sshd_host.drop_connections()
    await asyncio.sleep(pause_s)
    assert (await transport.run(config, up(sshd_host), timeout_s=10)).returncode == 0
    assert sshd_host.connection_count() == 2
    assert len(sshd_host.calls()) == 2


async def test_drop_during_a_command_is_connect_failed(sshd_host, transport):
    sshd_host.set_behaviour("redis", "hang")
    running = asyncio.create_task(transport.run(sshd_host.host_config(), up(sshd_host), timeout_s=30))
    assert await eventually(lambda: sshd_host.hang_pid() is not None)
    sshd_host.drop_connections()
    with pytest.raises(ConnectFailed, match="may have run"):
        await asyncio.wait_for(running, 5)
    sshd_host.set_behaviour("redis", "succeed")
    assert (await transport.run(sshd_host.host_config(), up(sshd_host), timeout_s=10)).returncode == 0


async def test_two_hosts_run_in_parallel(sshd_host, sshd_host2, transport):
    for host in (sshd_host, sshd_host2):
        host.set_behaviour("redis", "slow")
    started = time.monotonic()
    outs = await asyncio.gather(
        *(transport.run(h.host_config(), up(h), timeout_s=10) for h in (sshd_host, sshd_host2))
    )
    assert [o.returncode for o in outs] == [0, 0]
    assert time.monotonic() - started < 1.9  # one after the other takes > 2 s
    for host in (sshd_host, sshd_host2):
        assert host.calls() == [list(up(host).argv)]
        assert host.connection_count() == 1


# ---- the stand-in docker that other tests rely on --------------------------


@pytest.mark.parametrize(
    "behaviour, expected",
    [
        ("succeed", [("running", "healthy")]),
        ("unhealthy", [("running", "unhealthy")]),
        ("starting_then_healthy 2", [("running", "starting"), ("running", "starting"), ("running", "healthy")]),
        ("exited", [("exited", "")]),
        ("no_healthcheck", [("running", "")]),
        ("absent", [None]),
    ],
)
async def test_stand_in_ps_behaviours(sshd_host, transport, behaviour, expected):
    sshd_host.set_behaviour("redis", behaviour)
    ps = compose_ps(sshd_host.compose_path, "redis")
    seen = []
    for _ in expected:
        out = await transport.run(sshd_host.host_config(), ps, timeout_s=10)
        assert out.returncode == 0
        lines = out.stdout.splitlines()
        assert len(lines) <= 1  # one object per line (compose >= v2.21)
        seen.append((json.loads(lines[0])["State"], json.loads(lines[0])["Health"]) if lines else None)
    assert seen == expected


async def test_stand_in_array_ps(sshd_host, transport):
    sshd_host.set_behaviour("redis", "array_ps")
    out = await transport.run(sshd_host.host_config(), compose_ps(sshd_host.compose_path, "redis"), timeout_s=10)
    [container] = json.loads(out.stdout)  # one JSON array (compose < v2.21)
    assert (container["Name"], container["Service"], container["State"]) == ("core-redis-1", "redis", "running")


async def test_stand_in_secrets_and_unexpected_commands(sshd_host, transport):
    sshd_host.set_behaviour("redis", "secrets")
    out = await transport.run(sshd_host.host_config(), up(sshd_host), timeout_s=10)
    for secret in ("hunter2-stand-in", "stand-in-bearer-token-123", "stand-in-url-pass", "PRIVATE KEY", "ghp_"):
        assert secret in out.stdout and secret in out.stderr
    other = RemoteCommand("test_only", ("docker", "run", "--rm", "alpine"))
    out = await transport.run(sshd_host.host_config(), other, timeout_s=10)
    assert (out.returncode, out.stderr) == (125, "stand-in docker: unexpected command\n")
