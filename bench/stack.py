"""The bench's world: the dev server as `worker.py --dev` starts it, platform
roots over the gated hosts of bench/fanout_hosts.py, and workers (in this
process or `worker.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import Client, WorkflowHandle
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

import worker as platform_worker
from bench.floor import Floor, noop
from platformctl.client import connect, register_search_attributes
from platformctl.config import Settings
from tests.e2e.conftest import dev_server_port, write_module

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "default"
CORE = "compose/core/compose.yaml"  # every test sshd has it (tests/sshd.py)
INSTANT_HEALTH = {"stable_seconds": 0, "timeout_seconds": 30, "poll_seconds": 1}


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Children started meanwhile write their stdout and stderr to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@contextlib.contextmanager
def dev_server(state_dir: Path) -> Iterator[str]:
    """worker.start_dev_server itself (its flags, WAL pragmas, dynamic config); yields the address."""
    address = f"localhost:{dev_server_port()}"
    settings = Settings(address, NAMESPACE, "unused", state_dir, state_dir, "")
    state_dir.mkdir(parents=True, exist_ok=True)
    with _output_to(state_dir / "server.log"):  # its shutdown warnings would bury the last line
        proc = platform_worker.start_dev_server(settings)
    assert proc is not None, f"something already listened at {address}"
    try:
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@dataclass
class Platform:
    """One platform root; `hosts` is its hosts.yaml (bench/fanout_hosts.py's hosts)."""

    address: str
    root: Path
    hosts: dict[str, Any]
    client: Client = field(init=False)

    async def connect(self) -> None:
        (self.root / "modules").mkdir(parents=True)
        (self.root / "hosts.yaml").write_text(yaml.safe_dump(self.hosts))
        self.client = await connect(self.settings("unused"))
        await register_search_attributes(self.client, NAMESPACE)

    @property
    def host_names(self) -> list[str]:
        return list(self.hosts["hosts"])

    def settings(self, queue: str, phase: str = "05") -> Settings:
        return Settings(self.address, NAMESPACE, queue, self.root, self.root / "state", phase)

    def module(self, module_id: str, host: str, service: str | None = None, compose_file: str = CORE) -> None:
        write_module(self.root, module_id, host, service, health=INSTANT_HEALTH, compose_file=compose_file)

    async def start(self, queue: str, request: Any, tag: str = "apply") -> WorkflowHandle:
        return await self.client.start_workflow(
            "ApplyWorkflow", request, id=f"{tag}-{uuid.uuid4().hex[:12]}", task_queue=queue
        )

    async def floor(self, queue: str, count: int) -> WorkflowHandle:
        return await self.client.start_workflow(Floor.run, count, id=f"floor-{uuid.uuid4().hex[:12]}", task_queue=queue)


@contextlib.asynccontextmanager
async def platform_worker_task(platform: Platform, queue: str, phase: str = "05") -> AsyncIterator[None]:
    """worker.run_worker, the worker's own code, in this process."""
    stop = asyncio.Event()
    task = asyncio.create_task(platform_worker.run_worker(platform.settings(queue, phase), stop))
    await asyncio.sleep(0.5)  # its client connects and its pollers start
    if task.done():
        task.result()  # raises what stopped it
    try:
        yield
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def floor_worker(platform: Platform, queue: str, sandboxed: bool = True) -> AsyncIterator[None]:
    """The floor's worker: SDK defaults (the workflow sandbox on), same client (pydantic
    converter). `sandboxed=False`: without the sandbox, as worker.py runs the apply."""
    runner = SandboxedWorkflowRunner() if sandboxed else UnsandboxedWorkflowRunner()
    async with Worker(platform.client, task_queue=queue, workflows=[Floor], activities=[noop], workflow_runner=runner):
        yield


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def worker_process(platform: Platform, queue: str, log_path: Path) -> Iterator[WorkerProcess]:
    """`python worker.py` against the running server, as an operator starts it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "PLATFORM_", "PLATFORMCTL_"))}
    env.update(
        TEMPORAL_ADDRESS=platform.address, TEMPORAL_NAMESPACE=NAMESPACE, PLATFORM_TASK_QUEUE=queue,
        PLATFORM_ROOT=str(platform.root), PLATFORM_STATE_DIR=str(platform.root / "state"),
        PLATFORMCTL_PHASE="05", PYTHONUNBUFFERED="1",
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "worker.py"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "worker polling" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker.py did not start polling:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.1)
        yield WorkerProcess(proc, log_path)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def quiet_logs() -> None:
    """The in-process worker's INFO/WARNING lines (Python's and the SDK core's) would
    bury the table. The default runtime, so the floor's worker shares it too."""
    logging.basicConfig(level=logging.ERROR)
    quiet = TelemetryFilter(core_level="ERROR", other_level="ERROR")
    Runtime.set_default(Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=quiet))))
