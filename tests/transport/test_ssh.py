"""SshTransport against a real OpenSSH sshd (tests/sshd.py) and the stand-in docker."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import asyncssh
import pytest

from platformctl.commands import RemoteCommand, compose_images, compose_ps, compose_rollback, compose_up, git_head
from platformctl.transport.base import AuthenticationFailed, ConnectFailed, HostKeyMismatch
from platformctl.transport.ssh import SshTransport, _feed
from tests.sshd import SshHost, eventually, known_hosts_pattern, make_keypair, process_running, serve
from tests.transport.test_gate import forget_stdin, received_stdin

IMAGE = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def plain_server():
    """No gate: the transport's own behaviour, with whatever commands a test sends."""
    yield from serve("127.0.0.1")


@pytest.fixture(scope="module")
def plain_server2():
    yield from serve("127.0.0.2")


@pytest.fixture
def sshd_host(plain_server: SshHost) -> SshHost:
    plain_server.reset()
    return plain_server


@pytest.fixture
def sshd_host2(plain_server2: SshHost) -> SshHost:
    plain_server2.reset()
    return plain_server2


@pytest.fixture
async def transport():
    t = SshTransport()
    yield t
    await t.close()


def up(host: SshHost, service: str = "redis"):
    return compose_up(host.compose_path, service)


def rollback(host: SshHost, service: str = "redis", image_id: str = IMAGE) -> RemoteCommand:
    return compose_rollback(host.compose_path, service, image_id)


@pytest.fixture
def stdin_host(sshd_host):
    """sshd_host without the stand-in's stdin records of earlier tests."""
    forget_stdin(sshd_host.state_dir)
    return sshd_host


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


async def test_rollback_delivers_exactly_its_pin_on_stdin(stdin_host, transport):
    command = rollback(stdin_host)
    out = await transport.run(stdin_host.host_config(), command, timeout_s=10)
    assert (out.returncode, out.timed_out) == (0, False), out.stderr
    assert stdin_host.calls() == [list(command.argv)]
    assert received_stdin(stdin_host.state_dir) == [(list(command.argv), command.stdin)]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(range(256)) * 3,
        b"no newline at the end",
        bytes(range(256)) + b"0123456789abcdef\n" * (3 << 16),  # > 3 MiB: past the channel's 2 MiB window
    ],
    ids=["empty", "every-byte", "no-newline", "3MiB"],
)
async def test_any_stdin_bytes_arrive_exactly_then_eof(stdin_host, transport, data):
    # The stand-in reads to EOF and records what it got: the bytes must
    # arrive whole and in order, and the EOF after them.
    command = RemoteCommand("test_only", rollback(stdin_host).argv, stdin=data)
    out = await transport.run(stdin_host.host_config(), command, timeout_s=20)
    assert not out.timed_out
    assert out.returncode == 1  # not a JSON object: the stand-in refuses it, as compose would
    [(_, received)] = received_stdin(stdin_host.state_dir)
    assert (len(received), received) == (len(data), data)


async def test_a_command_without_stdin_gets_eof_at_once(stdin_host, transport):
    # The rollback's stand-in reads stdin to EOF before anything else: without
    # an EOF sent at once it would hang until the timeout.
    command = RemoteCommand("test_only", rollback(stdin_host).argv)
    started = time.monotonic()
    out = await transport.run(stdin_host.host_config(), command, timeout_s=5)
    assert (out.returncode, out.timed_out) == (1, False)
    assert time.monotonic() - started < 2
    assert received_stdin(stdin_host.state_dir) == [(list(command.argv), b"")]


async def test_a_program_that_ignores_its_stdin_still_reports_its_exit(stdin_host, transport):
    command = RemoteCommand("test_only", up(stdin_host).argv, stdin=b"x" * 100_000)
    outs = [await transport.run(stdin_host.host_config(), command, timeout_s=10) for _ in range(5)]
    assert [o.returncode for o in outs] == [0] * 5


async def test_stdin_for_a_command_that_already_ended_is_dropped(sshd_host):
    # E.g. the host gate refused the command (exit 126) before the input was
    # written: that is the command's outcome, not a lost connection.
    async with asyncssh.connect(
        sshd_host.address,
        sshd_host.port,
        username=sshd_host.user,
        known_hosts=asyncssh.import_known_hosts(sshd_host.host_key_line),
        client_keys=[sshd_host.client_key_path],
        agent_path=None,
        config=[],
    ) as conn:
        process = await conn.create_process(up(sshd_host).render(), stdin=asyncssh.PIPE, encoding=None)
        await process.wait_closed()
        _feed(process, b"too late")
    assert process.returncode == 0


async def test_concurrent_rollbacks_each_get_their_own_pin(stdin_host, transport):
    commands = [rollback(stdin_host, f"svc-{i}", "sha256:" + f"{i:x}" * 64) for i in range(12)]
    outs = await asyncio.gather(*(transport.run(stdin_host.host_config(), c, timeout_s=10) for c in commands))
    assert [o.returncode for o in outs] == [0] * 12
    received = sorted(received_stdin(stdin_host.state_dir))
    assert received == sorted((list(c.argv), c.stdin) for c in commands)
    assert stdin_host.connection_count() == 1


async def test_a_rollback_after_the_connection_dropped_runs_once_with_its_pin(stdin_host, transport):
    config = stdin_host.host_config()
    assert (await transport.run(config, up(stdin_host), timeout_s=10)).returncode == 0
    stdin_host.drop_connections()
    command = rollback(stdin_host)
    assert (await transport.run(config, command, timeout_s=10)).returncode == 0
    assert stdin_host.connection_count() == 2
    assert received_stdin(stdin_host.state_dir) == [(list(command.argv), command.stdin)]


async def test_timeout_kills_a_rollback(stdin_host, transport):
    stdin_host.set_behaviour("redis", "rollback=hang")
    out = await transport.run(stdin_host.host_config(), rollback(stdin_host), timeout_s=1)
    assert (out.returncode, out.timed_out) == (None, True)
    pid = stdin_host.hang_pid()
    assert pid is not None
    assert await eventually(lambda: not process_running(pid)), f"remote pid {pid} survived the timeout"
    assert [stdin for _, stdin in received_stdin(stdin_host.state_dir)] == [rollback(stdin_host).stdin]


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


async def test_commands_waiting_on_a_connect_that_fails_fail_with_it(sshd_host, transport):
    """A host that accepts TCP and never speaks SSH: every command waiting for the one
    connect attempt fails when it times out, not after one timeout each in turn."""
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    config = sshd_host.host_config(address="127.0.0.1", port=port, connect_timeout_seconds=1.0)
    started = time.monotonic()
    async with silent:
        outcomes = await asyncio.gather(
            *(transport.run(config, up(sshd_host), timeout_s=10) for _ in range(5)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(o, ConnectFailed) and o.retryable for o in outcomes), outcomes
        assert elapsed < 2, f"5 waiting commands failed after {elapsed:.1f} s"
        # A command after that failure tries again: it is not answered from the last one.
        started = time.monotonic()
        with pytest.raises(ConnectFailed):
            await transport.run(config, up(sshd_host), timeout_s=10)
        assert time.monotonic() - started >= 1


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


async def test_the_connection_negotiates_aes_gcm(sshd_host, transport):
    # OpenSSH's sshd offers chacha20-poly1305 first; the client's order decides, and
    # AES-GCM is the one that costs the worker less CPU per command.
    await transport.run(sshd_host.host_config(), compose_ps(sshd_host.compose_path, "redis"), timeout_s=10)
    [pooled] = transport._pool.values()
    assert pooled.conn.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
    assert pooled.conn.get_extra_info("recv_cipher") == "aes128-gcm@openssh.com"


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
        host.set_behaviour("redis", "slow spans=on")  # each up takes 1 s and records when it ran
    outs = await asyncio.gather(
        *(transport.run(h.host_config(), up(h), timeout_s=10) for h in (sshd_host, sshd_host2))
    )
    assert [o.returncode for o in outs] == [0, 0]
    # The two runs overlapped (a wall-clock bound failed on a loaded CI machine).
    [a], [b] = ([json.loads(line) for line in Path(h.state_dir, "spans.jsonl").read_text().splitlines()]
                for h in (sshd_host, sshd_host2))
    assert max(a["start"], b["start"]) < min(a["end"], b["end"]), (a, b)
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


async def test_stand_in_images(sshd_host, transport):
    config = sshd_host.host_config()
    default = compose_images(sshd_host.compose_path, "web")
    out = await transport.run(config, default, timeout_s=10)
    assert out.stdout.startswith('[{"ID":"sha256:') and out.stdout.endswith("}]\n\n")
    [row] = json.loads(out.stdout)
    assert row == {
        "ID": "sha256:" + "1" * 64,
        "ContainerName": "core-web-1",
        "Repository": "example/web",
        "Tag": "latest",
        "Platform": "linux/amd64",
        "Size": 1000,
        "LastTagTime": "0001-01-01T00:00:00Z",
    }
    other = "sha256:" + "cd" * 32
    sshd_host.set_behaviour("redis", f"starting_then_healthy 1 image={IMAGE},{other}")
    images = compose_images(sshd_host.compose_path, "redis")
    seen = []
    for _ in range(3):
        out = await transport.run(config, images, timeout_s=10)
        seen.append([r["ID"] for r in json.loads(out.stdout)])
        await transport.run(config, compose_up(sshd_host.compose_path, "redis"), timeout_s=10)
    assert seen == [[IMAGE], [other], [other]]  # one per up since the reset, the last repeating
    ps = await transport.run(config, compose_ps(sshd_host.compose_path, "redis"), timeout_s=10)
    assert json.loads(ps.stdout)["Health"] == "starting"  # the options leave the mode alone
    sshd_host.set_behaviour("redis", "absent")
    out = await transport.run(config, images, timeout_s=10)
    assert (out.returncode, out.stdout) == (0, "null\n\n")  # as compose v2.40 prints it


async def test_stand_in_rollback_outcomes(stdin_host, transport):
    stdin_host.set_behaviour("redis", "unhealthy rollback=fail")
    out = await transport.run(stdin_host.host_config(), rollback(stdin_host), timeout_s=10)
    assert (out.returncode, out.stderr) == (1, "Error response from daemon: stand-in failure starting core-redis-1\n")
    stdin_host.set_behaviour("redis", "fail")  # the mode is for a plain up; the rollback succeeds
    out = await transport.run(stdin_host.host_config(), rollback(stdin_host), timeout_s=10)
    assert out.returncode == 0
    assert len(received_stdin(stdin_host.state_dir)) == 2
