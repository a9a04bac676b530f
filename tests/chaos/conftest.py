"""Chaos fixtures: a dev server started as `worker.py --dev` starts it, gated
test sshds, and "lanes" (one platform root, task queue and real `worker.py`
process each) that a test kills and restarts.

What a chaos test checks after the dust settles, whatever it broke:
- every apply ends with the contract status it should have;
- each apply has exactly one audit line (platformctl/state.py, audit.jsonl);
- no two compose runs of one project overlapped on the host: the stand-in
  records each finished `up` (behaviour option `spans=on`), and a run killed
  before it finished must be gone before anything else runs
  (`compose_running`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from platformctl.client import register_search_attributes
from tests.chaos.dev_server import NAMESPACE, RestartableDevServer
from tests.e2e.conftest import E2E, REPO, WorkerProcess, ssh_host_entry, write_hosts
from tests.sshd import SshHost, process_running, start_sshd, unavailable_reason
from worker import _dies_with as dies_with

# ---- the dev server --------------------------------------------------------


@contextlib.contextmanager
def paused(server: RestartableDevServer) -> Iterator[None]:
    """The Temporal server frozen (SIGSTOP): every RPC waits until it thaws."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
async def chaos_server(tmp_path_factory) -> AsyncIterator[RestartableDevServer]:
    """A dev server started as `worker.py --dev` starts it (tests/chaos/dev_server.py), for one test file."""
    server = RestartableDevServer(tmp_path_factory.mktemp("dev-server"))
    try:
        await server.start()
        # Once, before several workers start at the same moment and race to add them.
        await register_search_attributes(server.client, NAMESPACE)
        yield server
    finally:
        if server.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.proc.pid, signal.SIGCONT)  # a test that failed while it was paused
        server.stop()


# ---- gated hosts -------------------------------------------------------------


def gated_host(address: str) -> Iterator[SshHost]:
    """Fixture body: a test sshd whose deploy key runs host/platform-gate, as in production."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    host = start_sshd(address, gate=True)
    try:
        yield host
    finally:
        for pid in compose_running(host):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        host.stop()


def add_project(host: SshHost, project: str, services: list[str]) -> str:
    """remote_root/compose/<project>/compose.yaml, owned like the rest of the checkout;
    returns its path relative to remote_root (module.yaml's compose_file)."""
    relative = f"compose/{project}/compose.yaml"
    path = Path(host.remote_root, relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("services:\n" + "".join(f"  {s}:\n    image: example/{s}:1\n" for s in services))
    owner = Path(host.remote_root).stat()
    for p in (path.parent, path):
        os.chown(p, owner.st_uid, owner.st_gid)
    return relative


def compose_running(host: SshHost, services: list[str] | None = None) -> list[int]:
    """PIDs of the host's stand-in docker processes still running a compose `up`
    (of one of `services`, when given: lanes share a host)."""
    docker = str(Path(host.bin_dir, "docker")).encode()
    wanted = None if services is None else {s.encode() for s in services}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted is not None and not wanted & set(argv):
            continue
        if docker in argv and b"up" in argv and process_running(int(entry)):
            found.append(int(entry))
    return found


def spans(host: SshHost) -> list[dict[str, Any]]:
    """Every finished `up` of a `spans=on` service since the host's spans were last cleared."""
    path = Path(host.state_dir, "spans.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def overlapping_runs(host: SshHost) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of finished compose runs of one project (same compose file) that overlapped in time."""
    found = []
    for a, b in itertools.combinations(spans(host), 2):
        if a["file"] == b["file"] and a["start"] < b["end"] and b["start"] < a["end"]:
            found.append((a, b))
    return found


def reset_host(host: SshHost) -> None:
    host.reset()
    Path(host.state_dir, "spans.jsonl").unlink(missing_ok=True)


# ---- lanes: a platform root, a task queue, its worker processes ---------------


# Several workers start at once on a busy 2-core machine: each imports for seconds.
WORKER_START_TIMEOUT_S = 120


class Lane(E2E):
    """E2E's harness with a patient worker start, whose workers get SIGTERM if the test
    process dies (a pytest timeout skips every teardown)."""

    async def start_worker(self, phase: str | None = "05") -> WorkerProcess:
        log_path = self.logs_dir / f"worker-{len(self.workers) + 1}.log"
        env = self.worker_env(phase)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "worker.py"], cwd=REPO, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=dies_with(os.getpid()),
            )
        worker = WorkerProcess(proc, log_path, env)
        self.workers.append(worker)
        await worker.wait_polling(WORKER_START_TIMEOUT_S)
        return worker


def make_lane(server: RestartableDevServer, base: Path, name: str, host: SshHost) -> Lane:
    """A platform root whose hosts.yaml names `host` as "h1", and its own task queue."""
    root = base / name / "platform"
    (root / "modules").mkdir(parents=True)
    logs = base / name / "logs"
    logs.mkdir()
    lane = Lane(server=server, root=root, state_dir=base / name / "state", logs_dir=logs)  # type: ignore[arg-type]
    lane.task_queue = f"chaos-{name}-{lane.task_queue}"
    write_hosts(root, {"h1": ssh_host_entry(host)})
    return lane


async def stop_workers(lanes: list[E2E]) -> None:
    """Every worker a lane started is gone afterwards, gracefully where it still runs."""
    for lane in lanes:
        for worker in lane.workers:
            if worker.proc.poll() is None:
                code, _ = await worker.terminate(timeout_s=10)
                if code is None:
                    worker.force_stop()


def audit_for(lane: E2E, workflow_id: str) -> list[dict[str, Any]]:
    return [line for line in lane.audit() if line["workflow_id"] == workflow_id]


async def phase(handle: WorkflowHandle) -> str | None:
    """The apply's phase from its status query; None while no worker answers."""
    try:
        status = await handle.query("status", rpc_timeout=timedelta(seconds=2))
    except Exception:
        return None
    return status.get("phase") if isinstance(status, dict) else None


async def wait_for_phase(handle: WorkflowHandle, wanted: str, timeout_s: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (seen := await phase(handle)) != wanted:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{handle.id} never reached phase {wanted!r} (last seen {seen!r})")
        await asyncio.sleep(0.05)


async def sleeping(handle: WorkflowHandle) -> bool:
    """The apply waits on a timer (e.g. between two health polls), no activity in flight."""
    activities: set[int] = set()
    timers: set[int] = set()
    async for event in handle.fetch_history_events():
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            activities.add(event.event_id)
        elif kind in _ACTIVITY_CLOSED:
            activities.discard(getattr(event, _ACTIVITY_CLOSED[kind]).scheduled_event_id)
        elif kind == EventType.EVENT_TYPE_TIMER_STARTED:
            timers.add(event.event_id)
        elif kind == EventType.EVENT_TYPE_TIMER_FIRED:
            timers.discard(event.timer_fired_event_attributes.started_event_id)
        elif kind == EventType.EVENT_TYPE_TIMER_CANCELED:
            timers.discard(event.timer_canceled_event_attributes.started_event_id)
    return bool(timers) and not activities


_ACTIVITY_CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}


# ---- holding a worker inside a step that reads a platform file ----------------


class FifoHold:
    """A platform file replaced by a named pipe: the worker's next read of it blocks
    until the test lets it through, so a kill lands inside the step that reads it.

    A reader is seen waiting when a non-blocking open for writing succeeds. To let
    one read through, a fresh pipe is put in place first, so the next reader can
    only be a new one.
    """

    def __init__(self, path: Path, content: str) -> None:
        self.path = path
        self.content = content
        self._writer: int | None = None
        path.unlink(missing_ok=True)
        os.mkfifo(path)

    async def wait_reader(self, timeout_s: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                self._writer = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
                return
            except OSError as e:  # ENXIO: nobody has it open for reading yet
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"nothing read {self.path} within {timeout_s} s") from e
            await asyncio.sleep(0.01)

    def let_through(self) -> None:
        """The waiting reader gets the content; later readers find a fresh pipe."""
        assert self._writer is not None
        fresh = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        os.mkfifo(fresh)
        os.replace(fresh, self.path)
        os.write(self._writer, self.content.encode())
        os.close(self._writer)
        self._writer = None

    def restore(self) -> None:
        """A regular file again (call once the blocked reader is dead)."""
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None
        if stat.S_ISFIFO(self.path.lstat().st_mode):
            self.path.unlink()
        self.path.write_text(self.content)

