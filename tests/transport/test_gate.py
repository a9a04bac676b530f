"""host/platform-gate: run as sshd would (SSH_ORIGINAL_COMMAND), and behind a real sshd."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import posixpath
import pwd
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import pytest

from platformctl.commands import compose_ps, compose_up, git_head
from platformctl.transport.ssh import SshTransport
from tests.sshd import (
    COMPOSE_FILE,
    GATE,
    STAND_IN_BIN,
    SYSTEM_PATH,
    eventually,
    process_running,
    serve,
    unavailable_reason,
    wait_until,
)

REFUSED = 126
# The tests run as root (the sshd ones must) and the gate refuses uid 0, so
# the gate on its own runs with a non-root euid faked; the uid-0 tests don't.
AS_NON_ROOT = (
    "import os, runpy, sys; os.geteuid = lambda: 65534; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
ROOT_REFUSAL = "platform-gate: refusing to run as root (uid 0); use a non-root deploy user\n"
# A uid-0 account with a harmless-looking name, as a careless host setup might create.
ROOT_ALIAS = "platform-deploy0"


def injections(root: str) -> list[str]:
    compose = f"{root}/{COMPOSE_FILE}"
    up = f"docker compose -f {compose} up -d"
    return [
        f"{up} redis; id",
        f"{up} redis;id",
        f"{up} $(id)",
        f"{up} `id`",
        f"{up} redis && id",
        f"{up} redis || id",
        f"docker compose -f {compose} ps --format json redis | sh",
        f"{up} redis > {root}/owned",
        f"{up} redis\nid",
        f"{up} redis\n",  # harmless once split, but no honest client sends it
        f"{up} redis\rid",
        f"docker compose -f {root}/../etc/compose.yaml up -d redis",
        f"docker compose -f {root}/compose/../../../etc/compose.yaml up -d redis",
        f"docker compose -f {root}//compose/core/compose.yaml up -d redis",
        "docker compose -f /etc/compose.yaml up -d redis",
        f"docker compose -f {posixpath.dirname(root)}/alias.yaml up -d redis",  # symlink into ROOT
        f"docker compose -f {root}/compose/escape.yaml up -d redis",  # symlink out of ROOT
        f"docker compose -f {root}/compose/core/compose.txt up -d redis",
        f"docker compose -f {compose} -f /etc/other.yaml up -d redis",
        f"docker compose -f {compose} up -d redis --build",
        f"docker compose -f {compose} up -d redis other",
        f"{up}",
        f"{up} -redis",
        f"{up} 'redis x'",
        f"docker compose -f {compose} ps redis",
        f"docker compose -f {compose} down",
        f'docker compose -f "{compose} up -d redis',  # unbalanced quote
        "docker run --rm -v /:/host alpine sh",
        "docker",
        "sh -c id",
        "/bin/sh",
        "id",
        f"git -C {root} log",
        f"git -C {root}/.. rev-parse HEAD",
        "git -C / rev-parse HEAD",
        f"git -C {root} rev-parse HEAD; id",
        "",
        f"docker compose -f {root}/secrets/x.yml up -d redis",
        f"docker compose -f {root}/.git/hooks/compose.yaml up -d redis",
        f"docker compose -f {root}/compose/evil.yml up -d redis",  # symlink to secrets/x.yml
        f"docker compose -f {root}/compose/env.yml ps --format json redis",  # symlink to .env
    ]


def sacred_links(root: str) -> dict[Path, Path]:
    """Symlinks inside ROOT, to files inside ROOT, but sacred ones."""
    return {
        Path(root, "compose", "evil.yml"): Path(root, "secrets", "x.yml"),
        Path(root, "compose", "env.yml"): Path(root, ".env"),
    }


def make_root(base: Path) -> tuple[str, Path]:
    """A remote root with the compose file, and a stand-in state dir."""
    root = base / "opt-platform"
    (root / COMPOSE_FILE).parent.mkdir(parents=True)
    (root / COMPOSE_FILE).write_text("services: {}\n")
    outside = base / "outside.yaml"
    outside.write_text("services: {}\n")
    (root / "compose" / "escape.yaml").symlink_to(outside)
    (base / "alias.yaml").symlink_to(root / COMPOSE_FILE)
    for link, target in sacred_links(str(root)).items():
        target.parent.mkdir(exist_ok=True)
        target.write_text("services: {}\n")
        link.symlink_to(target)
    state = base / "state"
    (state / "behaviour").mkdir(parents=True)
    (state / "calls.jsonl").touch()
    (state / "head_sha").write_text("a" * 40 + "\n")
    return str(root), state


def gate_env(command: str | None, state: Path) -> dict[str, str]:
    env = {"STAND_IN_DIR": str(state), "PATH": SYSTEM_PATH}
    if command is not None:
        env["SSH_ORIGINAL_COMMAND"] = command
    return env


def gate_argv(root: str, *options: str, as_root: bool = False) -> list[str]:
    """The gate's command line, with `options` before ROOT; unless `as_root`,
    as a non-root user."""
    run = [str(GATE)] if as_root else ["-c", AS_NON_ROOT, str(GATE)]
    return [sys.executable, *run, "--path", f"{STAND_IN_BIN}:{SYSTEM_PATH}", *options, root]


def run_gate(
    root: str, state: Path, command: str | None, *options: str, as_root: bool = False
) -> subprocess.CompletedProcess:
    argv = gate_argv(root, *options, as_root=as_root)
    return subprocess.run(argv, env=gate_env(command, state), capture_output=True, text=True, timeout=10)


def recorded(state: Path) -> list[list[str]]:
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


# ---- the gate on its own ----------------------------------------------------


@pytest.fixture
def local_root(tmp_path):
    return make_root(tmp_path)


@pytest.mark.parametrize(
    "build",
    [
        lambda r: compose_up(f"{r}/{COMPOSE_FILE}", "redis"),
        lambda r: compose_ps(f"{r}/{COMPOSE_FILE}", "a_b.c-1"),
        git_head,
    ],
)
def test_allowed_commands_reach_the_program_unchanged(local_root, build):
    root, state = local_root
    command = build(root)
    result = run_gate(root, state, command.render())
    assert result.returncode == 0, result.stderr
    assert recorded(state) == [list(command.argv)]


def test_quoted_parts_are_accepted(local_root):
    root, state = local_root
    result = run_gate(root, state, f"'docker' compose -f '{root}/{COMPOSE_FILE}' up -d \"redis\"")
    assert result.returncode == 0, result.stderr
    assert recorded(state) == [["docker", "compose", "-f", f"{root}/{COMPOSE_FILE}", "up", "-d", "redis"]]


def test_exit_status_is_passed_on(local_root):
    root, state = local_root
    (state / "behaviour" / "redis").write_text("fail")
    result = run_gate(root, state, compose_up(f"{root}/{COMPOSE_FILE}", "redis").render())
    assert result.returncode == 1
    assert "stand-in failure" in result.stderr


def test_injections_are_refused_and_nothing_runs(local_root):
    root, state = local_root
    outcomes = {cmd: run_gate(root, state, cmd) for cmd in injections(root)}
    outcomes["<unset>"] = run_gate(root, state, None)
    wrong = {cmd: (r.returncode, r.stderr) for cmd, r in outcomes.items() if r.returncode != REFUSED}
    assert wrong == {}
    assert all(r.stderr.startswith("platform-gate: ") for r in outcomes.values())
    assert recorded(state) == []
    assert not Path(root, "owned").exists()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["relative/root"],
        ["/"],
        ["/opt/../etc"],
        ["/opt/platform", "extra"],
        ["--sacred", "/opt/platform"],
        ["--bogus", "x", "/opt/platform"],
    ],
)
def test_bad_gate_arguments_refuse_everything(local_root, args):
    root, state = local_root
    env = gate_env(git_head(root).render(), state)
    argv = [sys.executable, "-c", AS_NON_ROOT, str(GATE), *args]
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert result.returncode == REFUSED
    assert recorded(state) == []


def load_gate():
    """host/platform-gate as a module (it has no .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("platform_gate", str(GATE))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def test_uid_0_is_refused_before_anything_runs(local_root, monkeypatch, capsys):
    root, state = local_root
    gate = load_gate()
    monkeypatch.setattr(gate.os, "geteuid", lambda: 0)
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", git_head(root).render())
    monkeypatch.setenv("STAND_IN_DIR", str(state))
    assert gate.main(["--path", f"{STAND_IN_BIN}:{SYSTEM_PATH}", root]) == REFUSED
    assert capsys.readouterr().err == ROOT_REFUSAL
    assert recorded(state) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs to run as root")
def test_gate_run_as_root_refuses_everything(local_root):
    root, state = local_root
    result = run_gate(root, state, compose_up(f"{root}/{COMPOSE_FILE}", "redis").render(), as_root=True)
    assert (result.returncode, result.stderr) == (REFUSED, ROOT_REFUSAL)
    assert recorded(state) == []


def assert_refused_as_sacred(result: subprocess.CompletedProcess, path: str, sacred: str) -> None:
    expected = f"platform-gate: compose file {path} is under sacred path {sacred}\n"
    assert (result.returncode, result.stderr) == (REFUSED, expected)


@pytest.mark.parametrize(
    "compose_file, sacred",
    [
        ("secrets/x.yml", "secrets/"),
        ("compose/evil.yml", "secrets/"),  # a symlink to secrets/x.yml
        ("compose/env.yml", ".env"),  # a symlink to the .env file
        (".git/compose.yaml", ".git/"),
    ],
)
def test_compose_files_under_default_sacred_paths_are_refused(local_root, compose_file, sacred):
    root, state = local_root
    path = f"{root}/{compose_file}"
    if not Path(path).exists():
        Path(path).parent.mkdir(exist_ok=True)
        Path(path).write_text("services: {}\n")
    assert_refused_as_sacred(run_gate(root, state, compose_up(path, "redis").render()), path, sacred)
    assert recorded(state) == []


def test_sacred_options_add_paths(local_root):
    root, state = local_root
    elsewhere = f"{root}/elsewhere"
    for rel in ("private/a.yml", "elsewhere/b.yml", "compose/ok.yml"):
        Path(root, rel).parent.mkdir(exist_ok=True)
        Path(root, rel).write_text("services: {}\n")
    options = ["--sacred", "private/", "--sacred", elsewhere]
    refused = {
        f"{root}/private/a.yml": "private/",  # relative to ROOT
        f"{root}/elsewhere/b.yml": elsewhere,  # absolute
    }
    for path, sacred in refused.items():
        result = run_gate(root, state, compose_up(path, "redis").render(), *options)
        assert_refused_as_sacred(result, path, sacred)
    assert recorded(state) == []
    allowed = compose_up(f"{root}/compose/ok.yml", "redis")
    result = run_gate(root, state, allowed.render(), *options)
    assert result.returncode == 0, result.stderr
    assert recorded(state) == [list(allowed.argv)]


def test_defaults_hold_when_sacred_options_are_given(local_root):
    root, state = local_root
    path = f"{root}/secrets/x.yml"
    result = run_gate(root, state, compose_up(path, "redis").render(), "--sacred", "private/")
    assert_refused_as_sacred(result, path, "secrets/")
    assert recorded(state) == []


def test_sacred_paths_are_resolved_like_the_compose_file(tmp_path):
    # ROOT itself a symlink: both sides must be compared as real paths, or
    # ROOT/secrets/x.yml (really /real/secrets/x.yml) slips past "secrets/".
    root, state = make_root(tmp_path)
    linked_root = tmp_path / "linked-root"
    linked_root.symlink_to(root)
    path = f"{linked_root}/secrets/x.yml"
    result = run_gate(str(linked_root), state, compose_up(path, "redis").render())
    assert_refused_as_sacred(result, path, "secrets/")
    assert recorded(state) == []


def test_command_is_killed_when_the_client_goes_away(local_root):
    root, state = local_root
    (state / "behaviour" / "redis").write_text("hang")
    gate = subprocess.Popen(
        gate_argv(root),
        env=gate_env(compose_up(f"{root}/{COMPOSE_FILE}", "redis").render(), state),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_until(lambda: (state / "hang.pid").exists())
        pid = int((state / "hang.pid").read_text())
        time.sleep(0.2)
        assert process_running(pid)  # the gate waits while its client is there
        gate.stdout.close()  # what sshd does when the channel closes
        gate.stderr.close()
        assert gate.wait(timeout=5) == 128 + 9
        assert wait_until(lambda: not process_running(pid)), f"pid {pid} survived its gate"
    finally:
        gate.kill()
        gate.wait()


# ---- the gate as the forced command of a real sshd --------------------------


@pytest.fixture(scope="module")
def gated_server():
    yield from serve("127.0.0.1", gate=True, sacred=("private/",))


@pytest.fixture
def gated_host(gated_server):
    gated_server.reset()
    return gated_server


@pytest.fixture
async def gated_conn(gated_host):
    conn = await asyncssh.connect(
        gated_host.address,
        gated_host.port,
        username=gated_host.user,
        known_hosts=asyncssh.import_known_hosts(gated_host.host_key_line),
        client_keys=[gated_host.client_key_path],
        agent_path=None,
        config=[],
    )
    yield conn
    conn.close()
    await conn.wait_closed()


async def test_transport_commands_pass_the_gate(gated_host):
    gated_host.set_head_sha("b" * 40)
    transport = SshTransport()
    config = gated_host.host_config()
    commands = [
        compose_up(gated_host.compose_path, "redis"),
        compose_ps(gated_host.compose_path, "redis"),
        git_head(gated_host.remote_root),
    ]
    try:
        outs = [await transport.run(config, c, timeout_s=10) for c in commands]
    finally:
        await transport.close()
    assert [o.returncode for o in outs] == [0, 0, 0]
    assert json.loads(outs[1].stdout)["State"] == "running"
    assert outs[2].stdout == "b" * 40 + "\n"
    assert gated_host.calls() == [list(c.argv) for c in commands]


async def test_injections_over_ssh_exit_126_and_nothing_runs(gated_host, gated_conn):
    root = gated_host.remote_root
    links = {
        Path(root, "compose", "escape.yaml"): Path("/etc/hostname"),
        Path(gated_host.base_dir, "alias.yaml"): Path(gated_host.compose_path),
        **sacred_links(root),
    }
    for link, target in links.items():
        if not link.is_symlink():
            link.symlink_to(target)
    results = {}
    for command in [*injections(root), f"docker compose -f {root}/private/x.yml up -d redis"]:
        results[command] = await gated_conn.run(command)
    wrong = {c: (r.exit_status, r.stderr) for c, r in results.items() if r.exit_status != REFUSED}
    assert wrong == {}
    assert gated_host.calls() == []
    assert not Path(gated_host.remote_root, "owned").exists()


async def test_no_shell_and_no_pty(gated_host, gated_conn):
    shell = await gated_conn.run(None)  # a login shell request reaches the gate without a command
    assert shell.exit_status == REFUSED
    with pytest.raises(asyncssh.ChannelOpenError):
        await gated_conn.create_process(git_head(gated_host.remote_root).render(), term_type="xterm")
    assert gated_host.calls() == []


async def test_port_forwarding_is_refused(gated_host, gated_conn):
    with pytest.raises(asyncssh.ChannelOpenError):
        await gated_conn.open_connection(gated_host.address, gated_host.port)


async def test_timeout_kills_the_command_behind_the_gate(gated_host):
    # OpenSSH refuses signals to forced-command sessions: only the gate's
    # watch on the closed channel can end this process.
    gated_host.set_behaviour("redis", "hang")
    transport = SshTransport()
    try:
        out = await transport.run(gated_host.host_config(), compose_up(gated_host.compose_path, "redis"), timeout_s=1)
    finally:
        await transport.close()
    assert out.timed_out
    pid = gated_host.hang_pid()
    assert pid is not None
    assert await eventually(lambda: not process_running(pid)), f"pid {pid} survived the timeout"
    assert "refusing to send signal" in Path(gated_host.log_path).read_text()


@pytest.fixture
def root_alias_host():
    """A gated sshd whose deploy user is uid 0 under another name."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        pwd.getpwnam(ROOT_ALIAS)  # left over from an interrupted run
    except KeyError:
        subprocess.run(
            ["useradd", "--non-unique", "--uid", "0", "--gid", "0", "--no-create-home",
             "--home-dir", "/", "--shell", "/bin/sh", ROOT_ALIAS],
            check=True,
            capture_output=True,  # it warns that uid 0 is outside UID_MIN..UID_MAX
        )
    assert pwd.getpwnam(ROOT_ALIAS).pw_uid == 0
    try:
        yield from serve("127.0.0.1", user=ROOT_ALIAS, gate=True)
    finally:
        # --force: userdel sees uid 0 in use by every root process.
        subprocess.run(["userdel", "--force", ROOT_ALIAS], check=True, capture_output=True)


async def test_a_uid_0_deploy_user_gets_nothing(root_alias_host):
    host = root_alias_host
    async with asyncssh.connect(
        host.address,
        host.port,
        username=host.user,
        known_hosts=asyncssh.import_known_hosts(host.host_key_line),
        client_keys=[host.client_key_path],
        agent_path=None,
        config=[],
    ) as conn:
        result = await conn.run(compose_up(host.compose_path, "redis").render())
    assert (result.exit_status, result.stderr) == (REFUSED, ROOT_REFUSAL)
    assert host.calls() == []
