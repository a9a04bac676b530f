"""End-to-end fixtures: a real Temporal dev server, the real `worker.py` as a
subprocess, and platform roots whose hosts are the real test sshds.

Nothing here registers the platform's search attributes: the worker must do
it itself. `dev_server.initial_custom_attributes` is what the server held
before any worker ran, so a test can prove who registered them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from tests.conftest import Outcome
from tests.docker_engine import DockerEngine, compose_file_text, serve_engine
from tests.servers import NAMESPACE, DevServer
from tests.sshd import SshHost, known_hosts_pattern, make_keypair, serve

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
POLLING_LINE = "worker polling"
PYTHON_WARNING = re.compile(r"^\S+:\d+: \w*Warning: ", re.MULTILINE)  # warnings.showwarning's format
WORKER_START_TIMEOUT_S = 30
GRACEFUL_EXIT_S = 25
PLATFORM_ATTRIBUTES = ("PlatformModule", "PlatformHost", "PlatformStatus")
# The server gives up on a lost worker's compose up this soon (30 s by default).
HEARTBEAT_TIMEOUT_S = 8
# Health windows short enough for real time.
FAST_HEALTH = {"stable_seconds": 2, "timeout_seconds": 8, "poll_seconds": 1}


# ---- the Temporal dev server ---------------------------------------------


# ---- the worker process ---------------------------------------------------


@dataclass
class WorkerProcess:
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str]
    killed: bool = False
    terminated: bool = False  # the test sent SIGTERM

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_polling(self, timeout_s: float = WORKER_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while POLLING_LINE not in self.log():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode} before polling:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker did not log {POLLING_LINE!r} within {timeout_s} s:\n{self.log()}")
            await asyncio.sleep(0.05)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.killed = True

    async def terminate(self, timeout_s: float = GRACEFUL_EXIT_S) -> tuple[int | None, float]:
        """SIGTERM; return (exit code or None if still running after timeout_s, seconds taken)."""
        started = time.monotonic()
        self.terminated = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None and time.monotonic() - started < timeout_s:
            await asyncio.sleep(0.05)
        return self.proc.poll(), time.monotonic() - started

    def exited_unexpectedly(self) -> bool:
        """Gone although the test neither killed nor stopped it."""
        return not (self.killed or self.terminated) and self.proc.poll() is not None

    def force_stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class E2E:
    """One platform root, one task queue, and the real worker processes serving it."""

    server: DevServer
    root: Path
    state_dir: Path
    logs_dir: Path
    task_queue: str = field(default_factory=lambda: f"e2e-{uuid.uuid4().hex[:12]}")
    workers: list[WorkerProcess] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)  # more worker settings, e.g. the approval key

    @property
    def client(self) -> Client:
        return self.server.client

    def worker_env(self, phase: str | None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TEMPORAL_", "PLATFORM_", "PLATFORMCTL_"))
        }
        env.update(
            TEMPORAL_ADDRESS=self.server.address,
            TEMPORAL_NAMESPACE=NAMESPACE,
            PLATFORM_TASK_QUEUE=self.task_queue,
            PLATFORM_ROOT=str(self.root),
            PLATFORM_STATE_DIR=str(self.state_dir),
            PLATFORM_HEARTBEAT_TIMEOUT_SECONDS=str(HEARTBEAT_TIMEOUT_S),
            PYTHONUNBUFFERED="1",
        )
        if phase is not None:
            env["PLATFORMCTL_PHASE"] = phase
        env.update(self.extra_env)
        return env

    async def start_worker(self, phase: str | None = "05") -> WorkerProcess:
        """`python worker.py` from the repo root; waits until it logs that it polls."""
        log_path = self.logs_dir / f"worker-{len(self.workers) + 1}.log"
        env = self.worker_env(phase)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "worker.py"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(proc, log_path, env)
        self.workers.append(worker)
        await worker.wait_polling()
        # An operator's terminal shows our lines only: no Python warning from a dependency.
        assert not PYTHON_WARNING.search(worker.log()), worker.log()
        return worker

    def all_logs(self) -> str:
        return "".join(w.log() for w in self.workers)

    async def start(self, request: Any, workflow_id: str | None = None) -> WorkflowHandle:
        return await self.client.start_workflow(
            "ApplyWorkflow",
            request,
            id=workflow_id or f"apply-e2e-{uuid.uuid4().hex[:12]}",
            task_queue=self.task_queue,
        )

    def check_workers(self) -> None:
        """Fail fast, with its log, if a worker died under the test."""
        for worker in self.workers:
            if worker.exited_unexpectedly():
                raise AssertionError(
                    f"{worker.log_path.name} (pid {worker.pid}) exited on its own with code "
                    f"{worker.proc.returncode}:\n{worker.log()[-4000:]}"
                )

    async def result(self, handle: WorkflowHandle, timeout_s: float) -> Any:
        """handle.result(), checking every half second that the workers still live."""
        waiting = asyncio.ensure_future(handle.result())
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=0.5)
                if done:
                    return waiting.result()
                self.check_workers()
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"workflow {handle.id} not done after {timeout_s} s; worker logs:\n{self.all_logs()[-6000:]}"
                    )
        finally:
            waiting.cancel()

    async def outcome(self, handle: WorkflowHandle, timeout_s: float = 90) -> Outcome:
        started = time.monotonic()
        try:
            result = await self.result(handle, timeout_s)
        except WorkflowFailureError as e:
            seconds = time.monotonic() - started
            assert isinstance(e.cause, ApplicationError), f"not an ApplicationError: {e.cause!r}"
            assert e.cause.non_retryable
            detail = e.cause.details[0]
            assert isinstance(detail, dict), detail
            return Outcome(detail["status"], detail, e.cause.type, handle, seconds)
        data = result if isinstance(result, dict) else result.model_dump()
        return Outcome(data["status"], data, None, handle, time.monotonic() - started)

    async def apply(self, request: Any, timeout_s: float = 90) -> Outcome:
        return await self.outcome(await self.start(request), timeout_s)

    def audit(self) -> list[dict]:
        path = self.state_dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def status_file(self, module: str) -> Path:
        return self.state_dir / "modules" / f"{module}.status.json"


@pytest.fixture
async def e2e(dev_server, tmp_path):
    root = tmp_path / "platform"
    (root / "modules").mkdir(parents=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    harness = E2E(server=dev_server, root=root, state_dir=tmp_path / "state", logs_dir=logs)
    yield harness
    # Every worker still running must shut down gracefully on SIGTERM.
    problems = []
    for worker in harness.workers:
        if worker.exited_unexpectedly():
            problems.append(
                f"{worker.log_path.name}: exited on its own with {worker.proc.returncode}\n{worker.log()[-3000:]}"
            )
            continue
        if worker.killed or worker.proc.poll() is not None:
            continue
        code, seconds = await worker.terminate()
        if code != 0:
            worker.force_stop()
            problems.append(
                f"{worker.log_path.name}: exit {code} after {seconds:.1f} s of SIGTERM\n{worker.log()[-3000:]}"
            )
    assert not problems, "\n".join(problems)


# ---- platform files pointing at the test sshds ---------------------------


def ssh_host_entry(host: SshHost, **over: Any) -> dict:
    return {
        "address": host.address,
        "port": host.port,
        "user": host.user,
        "remote_root": host.remote_root,
        "known_hosts": host.host_key_line,
        "client_key": host.client_key_path,
        "connect_timeout_seconds": 5,
        **over,
    }


def write_hosts(root: Path, hosts: dict[str, dict]) -> None:
    (root / "hosts.yaml").write_text(yaml.safe_dump({"hosts": hosts}))


def write_module(
    root: Path,
    module_id: str,
    host: str,
    service: str | None = None,
    *,
    health: dict | None = None,
    compose_file: str = "compose/core/compose.yaml",
    rollback: str | None = None,
    **runtime: Any,
) -> None:
    doc = {
        "id": module_id,
        "host": host,
        "spec": {
            "runtime": {
                "orchestrator": "docker-compose",
                "compose_file": compose_file,
                "compose_service": service or module_id,
                **runtime,
            },
            "health": health if health is not None else FAST_HEALTH,
        },
    }
    if rollback is not None:
        doc["spec"]["rollback"] = rollback
    folder = root / "modules" / module_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "module.yaml").write_text(yaml.safe_dump(doc))


def wrong_host_key_line(host: SshHost, tmp: Path) -> str:
    """A well-formed pin for the right address, but of a key the sshd does not hold."""
    other = make_keypair(tmp / "not_the_host_key", "impostor")
    return f"{known_hosts_pattern(host.address, host.port)} {other}"


def closed_port(address: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def dev_server_port() -> int:
    """A free port for a dev server whose Web UI port (+1000) is free too. Both lie
    below the kernel's ephemeral range: a port the kernel hands out (closed_port) can
    meanwhile become the local end of some outgoing connection, and the server then
    dies at its bind ("address already in use", seen in CI)."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(10000, ephemeral_low - 1000)
        with socket.socket() as server, socket.socket() as ui:
            try:
                server.bind(("127.0.0.1", port))
                ui.bind(("127.0.0.1", port + 1000))
            except OSError:
                continue
        return port


def compose_up_argv(host: SshHost, service: str) -> list[str]:
    return ["docker", "compose", "-f", host.compose_path, "up", "-d", service]


def compose_ps_argv(host: SshHost, service: str) -> list[str]:
    return ["docker", "compose", "-f", host.compose_path, "ps", "--all", "--format", "json", service]


def connection_attempts(host: SshHost) -> int:
    """TCP connections sshd logged since the host's last reset (authenticated or not).

    The first test to use a session sshd may also see the fixture's own
    is-it-listening probe, logged just after the reset: take a baseline
    once a worker is up instead of assuming zero.
    """
    return Path(host.log_path).read_text(errors="replace").count("Connection from ")


async def activity_attempts(handle: WorkflowHandle, activity_type: str) -> list[int]:
    """The attempt number of every completed/failed run of `activity_type`
    (Temporal records one ActivityTaskStarted per final attempt)."""
    scheduled: dict[int, str] = {}
    attempts = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = event.activity_task_started_event_attributes
            if scheduled.get(attrs.scheduled_event_id) == activity_type:
                attempts.append(attrs.attempt)
    return attempts


def history_text(history: Any) -> str:
    """A workflow history as JSON plus every payload's data decoded (the JSON
    form holds payloads as base64, which a plain substring search cannot see)."""
    return json_text(history.to_json())


def json_text(raw: str) -> str:
    """JSON text (a history, as the SDK or `temporal workflow show -o json` gives it)
    plus every payload's data decoded."""
    decoded: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                decoded.append(base64.b64decode(node["data"]).decode("utf-8", errors="replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(raw))
    return raw + "\n" + "\n".join(decoded)


# ---- a real Docker engine behind a real sshd and the gate ------------------
#
# `docker_engine` (tests/docker_engine.py) is the session's dockerd with the
# images APP_V1 (healthy) and APP_V2 (unhealthy); `engine_host` is a gated
# test sshd whose deploy user runs the real docker client against it (and the
# stand-in git: the checkout is at SHA). A test writes its module with
# `write_engine_module` and reads the engine as root with `engine_service` or
# `docker_engine.docker(...)`.

ENGINE_ADDRESS = "127.0.0.3"
ENGINE_HOST = "engine"  # the host's name in hosts.yaml (`engine_e2e`)
# Short windows for a real engine: the compose healthcheck runs every second.
ENGINE_HEALTH = {"stable_seconds": 2, "timeout_seconds": 20, "poll_seconds": 1}


@pytest.fixture(scope="session")
def docker_engine():
    """The session's real dockerd (tests/docker_engine.py), started on first use."""
    yield from serve_engine()


@pytest.fixture(scope="session")
def engine_sshd_server(docker_engine: DockerEngine):
    """A gated test sshd on 127.0.0.3 whose `docker` is the real client on the session's engine."""
    yield from serve(ENGINE_ADDRESS, gate=True, engine=docker_engine)


@pytest.fixture
def engine_host(engine_sshd_server: SshHost, docker_engine: DockerEngine) -> SshHost:
    """The engine's sshd reset, and the engine without the containers and networks of earlier tests."""
    engine_sshd_server.reset()
    docker_engine.reset()
    return engine_sshd_server


@pytest.fixture
def engine_e2e(e2e, engine_host):
    """The e2e harness whose hosts.yaml holds only the engine's sshd, as ENGINE_HOST."""
    write_hosts(e2e.root, {ENGINE_HOST: ssh_host_entry(engine_host)})
    return e2e


def engine_compose_file(project: str) -> str:
    """The compose file of `project`, relative to remote_root (module.yaml's compose_file)."""
    return f"compose/{project}/compose.yaml"


def write_engine_compose(
    host: SshHost, project: str, service: str, image: str, command: list[str] | None = None
) -> str:
    """(Re)write remote_root/compose/<project>/compose.yaml so that `service` runs
    `image` (a tag or a `sha256:` ID) with the healthcheck `test -f /healthy`;
    return its absolute path, as the gate and `docker compose -f` see it.
    Compose names the project after the directory: `project`."""
    path = Path(host.remote_root, engine_compose_file(project))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(compose_file_text(image, service, command=command))
    owner = Path(host.remote_root).stat()
    for p in (path.parent, path):
        os.chown(p, owner.st_uid, owner.st_gid)  # the deploy user's checkout, like the rest of remote_root
        p.chmod(0o755 if p.is_dir() else 0o644)
    return str(path)


def write_engine_module(
    root: Path,
    host: SshHost,
    module_id: str,
    image: str,
    *,
    service: str = "app",
    project: str | None = None,
    health: dict | None = None,
    host_name: str = ENGINE_HOST,
    command: list[str] | None = None,
    **runtime: Any,
) -> str:
    """A module on the engine host whose compose file (project `module_id` unless
    given) runs `image` as `service` (with `command`, if given); ENGINE_HEALTH
    unless `health`. Returns the compose file's absolute path. Call again with
    another image to change it."""
    project = project or module_id
    compose_path = write_engine_compose(host, project, service, image, command)
    write_module(
        root, module_id, host_name, service,
        health=health if health is not None else ENGINE_HEALTH,
        compose_file=engine_compose_file(project),
        **runtime,
    )
    return compose_path


def engine_service(engine: DockerEngine, compose_path: str, service: str) -> dict:
    """The one container of `service`, as root's `docker compose ps --all --format json` shows it."""
    out = engine.compose(compose_path, "ps", "--all", "--format", "json", service).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(rows) == 1, f"expected one container of {service}, got: {out}"
    return rows[0]

