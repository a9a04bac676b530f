"""A real OpenSSH sshd per test host, for transport and end-to-end tests.

Each host is its own sshd process (run by root, `-D -e -f <own config>`) on a
free port of its own loopback address, with its own host key, one non-root
deploy user, and `SetEnv PATH=<base>/bin:...` so the stand-in `docker` and
`git` answer instead of real ones and record every call in the host's state
dir. Everything the deploy user runs (the stand-ins, the gate) is copied into
the host's own world-readable base dir: the checkout may sit where that user
cannot reach (root's home, a 0700 temp dir). Nothing here touches the system
sshd or its config.

Fixtures: `sshd_server` / `sshd_server2` (session scoped, 127.0.0.1 and
127.0.0.2) and `sshd_host` / `sshd_host2`, the same servers reset to a clean
state (no calls, default behaviours, fresh log) before each test.

With `engine=` (a tests/docker_engine.DockerEngine) the host runs the real
docker.io client against that engine instead of the stand-in docker: the
deploy user joins the socket's group, sessions get DOCKER_HOST and
DOCKER_CONFIG, and `docker` on the sessions' PATH (and so on the gate's
`--path`) is a link to /usr/bin/docker. The stand-in git stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from platformctl.models import HostConfig

if TYPE_CHECKING:
    from tests.docker_engine import DockerEngine

SSHD = "/usr/sbin/sshd"
DEPLOY_USER = "platform-deploy"
REPO = Path(__file__).resolve().parents[1]
STAND_IN_BIN = REPO / "tests" / "stand_in"  # the sources; hosts run copies
STAND_INS = ("docker", "git")
GATE = REPO / "host" / "platform-gate"
GATE_CODE = REPO / "host" / "platform_gate.py"
AGENT_CODE = REPO / "host" / "platform_agent.py"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
DEFAULT_HEAD_SHA = "0123456789abcdef0123456789abcdef01234567"
COMPOSE_FILE = "compose/core/compose.yaml"
LEASE_TTL_S = 15


def unavailable_reason() -> str | None:
    """Why no test sshd can run here, or None when it can."""
    if os.geteuid() != 0:
        return "the test sshd needs root (it runs its own sshd and creates the deploy user)"
    if not os.access(SSHD, os.X_OK) or not shutil.which("ssh-keygen"):
        return f"openssh-server is not installed ({SSHD} or ssh-keygen missing)"
    return None


def make_keypair(path: Path, comment: str = "platform-test") -> str:
    """Write an ed25519 key pair at `path`; return the public "type base64" part."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    key_type, b64 = Path(f"{path}.pub").read_text().split()[:2]
    return f"{key_type} {b64}"


def known_hosts_pattern(address: str, port: int) -> str:
    """How OpenSSH and asyncssh name a host in known_hosts."""
    return address if port == 22 else f"[{address}]:{port}"


@dataclass
class SshHost:
    address: str
    port: int
    user: str
    host_key_line: str  # "[addr]:port ssh-ed25519 AAAA...", ready for known_hosts
    client_key_path: str
    remote_root: str
    state_dir: str
    log_path: str
    base_dir: str
    bin_dir: str  # the stand-ins the deploy user runs
    process: subprocess.Popen = field(repr=False)
    engine: DockerEngine | None = field(default=None, repr=False)  # the real engine `docker` talks to, if any

    @property
    def compose_path(self) -> str:
        return f"{self.remote_root}/{COMPOSE_FILE}"

    def host_config(self, name: str | None = None, **overrides) -> HostConfig:
        values = dict(
            name=name or f"test-{self.address}",
            address=self.address,
            port=self.port,
            user=self.user,
            remote_root=self.remote_root,
            known_hosts=self.host_key_line,
            client_key=self.client_key_path,
            connect_timeout_seconds=5,
        )
        values.update(overrides)
        return HostConfig(**values)

    def calls(self) -> list[list[str]]:
        """Every argv the stand-ins recorded since the last reset, in order."""
        text = Path(self.state_dir, "calls.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]

    def set_behaviour(self, service: str, behaviour: str) -> None:
        Path(self.state_dir, "behaviour", service).write_text(behaviour + "\n")

    def set_engine(self, words: str) -> None:
        """How the stand-in's `docker version` and `docker compose version` fail (tests/stand_in/docker)."""
        Path(self.state_dir, "engine").write_text(words + "\n")

    def set_head_sha(self, sha: str) -> None:
        Path(self.state_dir, "head_sha").write_text(sha + "\n")

    def hang_pid(self) -> int | None:
        """PID of the stand-in's latest `hang` process, once it has started."""
        try:
            return int(Path(self.state_dir, "hang.pid").read_text())
        except FileNotFoundError:
            return None

    def connection_count(self) -> int:
        """Connections that authenticated since the last reset."""
        return Path(self.log_path).read_text(errors="replace").count("Accepted publickey for ")

    def drop_connections(self) -> None:
        """Kill every per-connection sshd child: clients see the connection drop."""
        for pid in descendants(self.process.pid):
            _kill(pid)

    def _kill_hung_stand_in(self) -> None:
        pid = self.hang_pid()
        if pid is None:
            return
        try:  # the PID may be long gone and reused: only kill our stand-in
            ours = str(Path(self.bin_dir, "docker")).encode() in Path("/proc", str(pid), "cmdline").read_bytes()
        except OSError:  # gone: no file, or (reaped between open and read) ESRCH
            ours = False
        if ours:  # a failed test may have left it behind, possibly orphaned
            _kill(pid)
        Path(self.state_dir, "hang.pid").unlink()

    def _kill_stand_ins(self) -> None:
        """Every stand-in of this host still running: a session whose sshd was killed
        (the chaos tests) leaves its command behind, orphaned, and it outlived the run."""
        ours = str(Path(self.bin_dir, "docker")).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                found = ours in (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if found:
                _kill(int(proc.name))

    def reset(self) -> None:
        self._kill_hung_stand_in()
        # Truncate in place: the files stay owned by the deploy user who writes them.
        os.truncate(Path(self.state_dir, "calls.jsonl"), 0)
        Path(self.state_dir, "stdin.jsonl").unlink(missing_ok=True)  # what the rollbacks were given
        Path(self.state_dir, "release").unlink(missing_ok=True)  # what lets a `hold` up finish
        Path(self.state_dir, "engine").unlink(missing_ok=True)  # how `docker version` fails, if it does
        for lease in Path(self.base_dir, "agent-state", "leases").glob("*.json"):
            lease.unlink()  # one test's unreleased lease (a killed worker's) is not the next test's
        os.truncate(self.log_path, 0)  # sshd appends (O_APPEND), so this is safe
        for path in Path(self.state_dir, "behaviour").iterdir():
            path.unlink()
        self.set_head_sha(DEFAULT_HEAD_SHA)

    def stop(self) -> None:
        self._kill_hung_stand_in()
        self._kill_stand_ins()
        self.drop_connections()
        self.process.terminate()
        self.process.wait(timeout=5)
        shutil.rmtree(self.base_dir, ignore_errors=True)


def process_running(pid: int) -> bool:
    """False once `pid` is gone. A zombie counts as gone: a killed process whose
    parent died is reparented to PID 1, which may never reap it (containers),
    and os.kill(pid, 0) still succeeds on it."""
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:  # gone: no file, or (reaped between open and read) ESRCH
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def eventually(predicate, timeout_s: float = 3.0) -> bool:
    """wait_until for async tests: lets the event loop run while waiting."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def accounts_lock() -> Iterator[None]:
    """One account change at a time across the test processes (xdist workers):
    useradd and usermod fail, rather than wait, while another holds /etc/passwd."""
    with open("/tmp/platform-tests-accounts.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _ensure_user(user: str) -> pwd.struct_passwd:
    with accounts_lock():
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            # A home directory keeps sshd from printing "Could not chdir" into every session.
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", user], check=True)
            entry = pwd.getpwnam(user)
        # Without PAM a locked password field ("!") refuses even key logins; "*" is unlocked but unusable.
        subprocess.run(["usermod", "-p", "*", user], check=True)
    return entry


def _openssh_version() -> tuple[int, int]:
    out = subprocess.run([SSHD, "-V"], capture_output=True, text=True)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _wait_listening(process: subprocess.Popen, address: str, port: int, deadline_s: float = 5.0) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            socket.create_connection((address, port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.005)
    return False


def _install(source: Path, target: Path) -> None:
    """Copy a program the deploy user runs; 0755 whatever the checkout's umask was."""
    shutil.copyfile(source, target)
    target.chmod(0o755)


def install_gate(lib: Path, link: Path) -> Path:
    """host/README.md's install, with `lib` for /usr/local/lib/platform-gate and
    `link` for /usr/local/bin/platform-gate: the two files, their bytecode
    compiled by the interpreter of the gate's #! line, and the link."""
    lib.mkdir(parents=True)
    for path in (lib.parent, lib):
        path.chmod(0o755)
    _install(GATE, lib / GATE.name)
    for code in (GATE_CODE, AGENT_CODE):
        shutil.copyfile(code, lib / code.name)
        (lib / code.name).chmod(0o644)
    subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(lib)], check=True)
    cache = lib / "__pycache__"
    cache.chmod(0o755)  # readable by the deploy user whatever the umask was
    for pyc in cache.iterdir():
        pyc.chmod(0o644)
    link.symlink_to(lib / GATE.name)
    return link


def _check_stand_ins(entry: pwd.struct_passwd, path: str, bin_dir: Path, names: tuple[str, ...] = STAND_INS) -> None:
    """Fail loudly unless the deploy user, on the sessions' PATH, gets the
    stand-ins: else the machine's real docker would answer the tests."""
    for name in names:
        found = subprocess.run(
            [name],  # looked up on env's PATH, as the user's shell would
            env={"PATH": path},  # no STAND_IN_DIR: a stand-in says so and exits 125
            user=entry.pw_uid,
            group=entry.pw_gid,
            extra_groups=os.getgrouplist(entry.pw_name, entry.pw_gid),
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if (found.returncode, found.stderr) != (125, f"stand-in {name}: STAND_IN_DIR is not set\n"):
            raise RuntimeError(
                f"{entry.pw_name} running `{name}` on PATH={path} did not get {bin_dir / name}: "
                f"exit {found.returncode}, stdout {found.stdout[:300]!r}, stderr {found.stderr[:300]!r}"
            )


def _join_engine(user: str, engine: DockerEngine, path: str, bin_dir: Path) -> None:
    """Let `user` reach the engine as the sessions will, or fail loudly."""
    with accounts_lock():
        subprocess.run(["usermod", "-a", "-G", engine.socket_group, user], check=True)
    entry = pwd.getpwnam(user)
    found = subprocess.run(
        ["sh", "-c", "command -v docker && docker version --format '{{.Server.Version}}' && docker compose version"],
        env={"PATH": path, **engine.env()},
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=os.getgrouplist(entry.pw_name, entry.pw_gid),
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if found.returncode != 0 or found.stdout.splitlines()[:1] != [str(bin_dir / "docker")]:
        raise RuntimeError(
            f"{user} on PATH={path} cannot use the engine at {engine.host} through {bin_dir / 'docker'}: "
            f"exit {found.returncode}, stdout {found.stdout[:300]!r}, stderr {found.stderr[:300]!r}"
        )


def start_sshd(
    address: str = "127.0.0.1",
    *,
    user: str = DEPLOY_USER,
    gate: bool = False,
    sacred: tuple[str, ...] = (),
    engine: DockerEngine | None = None,
    real_git: bool = False,
    gate_options: tuple[str, ...] = (),
) -> SshHost:
    """Start a test sshd on `address`. With `gate`, every login of the deploy
    key runs host/platform-gate as a forced command, as on a production host,
    with `--sacred` for each of `sacred` and `gate_options` (e.g. `--allow-sync`).
    With `engine`, `docker` is the real client talking to that engine (see the
    module doc); git stays a stand-in unless `real_git` (the host's own git)."""
    entry = _ensure_user(user)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation chroot

    base = Path(tempfile.mkdtemp(prefix=f"sshd-{address}-"))
    base.chmod(0o755)  # the deploy user reads authorized_keys and reaches its dirs
    bin_dir = base / "bin"
    bin_dir.mkdir()
    bin_dir.chmod(0o755)  # mkdir's mode is cut down by the umask
    real = {"docker": engine is not None, "git": real_git}
    stand_ins = tuple(n for n in STAND_INS if not real[n])
    for name in stand_ins:
        _install(STAND_IN_BIN / name, bin_dir / name)
    session_path = f"{bin_dir}:{SYSTEM_PATH}"
    _check_stand_ins(entry, session_path, bin_dir, stand_ins)
    engine_env = ""
    if engine is not None:
        # Ahead of SYSTEM_PATH, where /usr/local/bin may hold another docker client.
        (bin_dir / "docker").symlink_to(engine.client)
        _join_engine(user, engine, session_path, bin_dir)
        engine_env = "".join(f" {k}={v}" for k, v in engine.env().items())
    host_key_pub = make_keypair(base / "host_key", "test-sshd-host")
    client_pub = make_keypair(base / "client_key", "platform-deploy-test")

    remote_root = base / "opt-platform"
    (remote_root / COMPOSE_FILE).parent.mkdir(parents=True)
    (remote_root / COMPOSE_FILE).write_text("services:\n  redis:\n    image: redis:7\n")
    state_dir = base / "state"
    (state_dir / "behaviour").mkdir(parents=True)
    (state_dir / "calls.jsonl").touch()
    for path in [remote_root, *remote_root.rglob("*"), state_dir, state_dir / "calls.jsonl"]:
        os.chown(path, entry.pw_uid, entry.pw_gid)

    restrictions = ""
    if gate:
        # By its path, as on a host, so that its #! line (/usr/bin/python3 -IS) applies.
        gate_program = install_gate(base / "lib" / "platform-gate", base / "platform-gate")
        options = "".join(f" --sacred {path}" for path in sacred) + "".join(f" {o}" for o in gate_options)
        # The agent's records and kept output: this server's own, so parallel tests never share a lock.
        agent_state = base / "agent-state"
        agent_state.mkdir(mode=0o700)
        os.chown(agent_state, entry.pw_uid, entry.pw_gid)
        # A short lease: a test whose apply could not release it (its host or worker was
        # killed) has the next apply wait seconds, not the default ten minutes.
        options += f" --state {agent_state} --lease-ttl {LEASE_TTL_S}"
        restrictions = f'command="{gate_program} --path {session_path}{options} {remote_root}",restrict '

    authorized_keys = base / "authorized_keys"
    authorized_keys.write_text(f"{restrictions}{client_pub}\n")
    authorized_keys.chmod(0o644)

    session_env = f"PATH={session_path} STAND_IN_DIR={state_dir}{engine_env}"
    try:
        process, port = launch_sshd(base, address, user, str(authorized_keys), session_env, gate=gate)
    except RuntimeError:
        shutil.rmtree(base, ignore_errors=True)
        raise
    host = SshHost(
        address=address,
        port=port,
        user=user,
        host_key_line=f"{known_hosts_pattern(address, port)} {host_key_pub}",
        client_key_path=str(base / "client_key"),
        remote_root=str(remote_root),
        state_dir=str(state_dir),
        log_path=str(base / "sshd.log"),
        base_dir=str(base),
        bin_dir=str(bin_dir),
        process=process,
        engine=engine,
    )
    host.reset()
    return host


def launch_sshd(
    base: Path, address: str, user: str, authorized_keys: str, session_env: str, *, gate: bool = True,
    strict_modes: bool = False,
) -> tuple[subprocess.Popen, int]:
    """sshd -D on a free port of `address`, with the host key at base/host_key, its config and
    log (base/sshd.log) in `base`, letting in `user` only, by the keys of `authorized_keys` (a
    path, or sshd's own pattern such as `.ssh/authorized_keys`), with `session_env` set in
    every session. (process, port) once it listens."""
    log_path = base / "sshd.log"
    log_path.touch()
    # OpenSSH >= 9.8 blocks a source address after failed logins, and the
    # auth-failure tests share 127.0.0.1 with every other test.
    penalties = ["PerSourcePenalties no"] if _openssh_version() >= (9, 8) else []
    last_error = ""
    for _ in range(3):  # another process may grab the free port before sshd binds it
        port = _free_port(address)
        config = base / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {address}:{port}",
                    f"HostKey {base / 'host_key'}",
                    "PidFile none",
                    f"AuthorizedKeysFile {authorized_keys}",
                    "UsePAM no",
                    # Off for keys under /tmp; on where host/install wrote them, as on a host.
                    f"StrictModes {'yes' if strict_modes else 'no'}",
                    f"AllowUsers {user}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    # A uid-0 key with a forced command gets in, as on hosts with
                    # the default prohibit-password: the gate must refuse it itself.
                    f"PermitRootLogin {'forced-commands-only' if gate else 'no'}",
                    "LogLevel VERBOSE",
                    f"SetEnv {session_env}",
                    *penalties,
                    "",
                ]
            )
        )
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config), "-E", str(log_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _wait_listening(process, address, port):
            return process, port
        process.kill()
        process.wait()
        last_error = log_path.read_text(errors="replace")
    raise RuntimeError(f"test sshd on {address} did not start:\n{last_error}")


def serve(address: str, **options):
    """Fixture body: yield a started test sshd (start_sshd's `options`) and
    stop it afterwards; skip (with the reason) where no test sshd can run."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    host = start_sshd(address, **options)
    yield host
    host.stop()


# Gated, as hosts are: the worker reaches a host only through the gate's agent verbs.
@pytest.fixture(scope="session")
def sshd_server():
    yield from serve("127.0.0.1", gate=True)


@pytest.fixture(scope="session")
def sshd_server2():
    yield from serve("127.0.0.2", gate=True)


@pytest.fixture
def sshd_host(sshd_server: SshHost) -> SshHost:
    sshd_server.reset()
    return sshd_server


@pytest.fixture
def sshd_host2(sshd_server2: SshHost) -> SshHost:
    sshd_server2.reset()
    return sshd_server2
