from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_timeout
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import Deps, build_activities
from platformctl.client import DATA_CONVERTER, SEARCH_ATTRIBUTES
from platformctl.config import Settings
from platformctl.module_state import module_state_id
from platformctl.transport.fake import FakeTransport
from tests.platform_files import SHA, write_platform

# The session's dev servers (tests/servers.py) and real OpenSSH sshd hosts with the stand-in docker (tests/sshd.py).
from tests.servers import dev_env, dev_server  # noqa: F401
from tests.sshd import sshd_host, sshd_host2, sshd_server, sshd_server2  # noqa: F401
from worker import HEARTBEAT_THROTTLE
from workflows.registry import ALL_WORKFLOWS

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


# pytest-timeout's thread method, ending with what CI's tail of the output shows:
# the test that hung and where each of this repo's coroutines waits.
@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item, settings):
    if settings.method != "thread":
        return None
    timer = threading.Timer(settings.timeout, _timed_out, (item, settings))
    timer.daemon = True

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel
    timer.start()
    return True


def _timed_out(item, settings) -> None:
    terminal = item.config.get_terminal_writer()
    try:
        capman = item.config.pluginmanager.getplugin("capturemanager")
        if capman:
            capman.suspend_global_capture(item)
            _, err = capman.read_global_capture()
            if err:
                terminal.sep("~", title="Captured stderr")
                terminal.write(err)
        pytest_timeout.dump_stacks(terminal)
        terminal.sep("~", title="Where this repo's coroutines wait")
        for line in _waiting_coroutines():
            terminal.line(line)
        terminal.sep("+", title=f"Timeout: {item.nodeid} still running after {settings.timeout:.0f} s")
    finally:
        terminal.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _waiting_coroutines() -> list[str]:
    """Each task's await chain, this repo's frames only, from the main thread's event loop."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    loop = None
    while frame is not None and loop is None:
        candidate = frame.f_locals.get("self")
        loop = candidate if isinstance(candidate, asyncio.AbstractEventLoop) else None
        frame = frame.f_back
    if loop is None:
        return ["(no event loop running)"]
    lines = []
    for task in list(asyncio.all_tasks(loop)):
        chain, coro = [], task.get_coro()
        while coro is not None and (f := getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)):
            if REPO in Path(f.f_code.co_filename).parents and ".venv" not in f.f_code.co_filename:
                chain.append(f"{Path(f.f_code.co_filename).relative_to(REPO)}:{f.f_lineno} {f.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if chain:
            lines.append(f"{task.get_name()}: " + " -> ".join(chain))
    return lines


@pytest.fixture(scope="session")
async def ts_env():
    """The time-skipping test server from the venv: long waits cost no real time."""
    async for env in _time_skipping():
        yield env


@pytest.fixture(scope="module")
async def own_ts_env():
    """A time-skipping server of the module's own, for tests that skip hours: on the shared
    one, workflows earlier files left waiting on short timers, their workers gone, stopped
    the skipping (a 2 h approval wait hung until its xdist worker died)."""
    async for env in _time_skipping():
        yield env


async def _time_skipping():  # type: ignore[no-untyped-def]
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(VENV_BIN / "temporal-test-server"),
        data_converter=DATA_CONVERTER,
    )
    # This server has no ListSearchAttributes, so add them without asking first.
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace="default",
            search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in SEARCH_ATTRIBUTES},
        )
    )
    yield env
    await env.shutdown()


@dataclass
class Outcome:
    status: str
    result: dict[str, Any]
    error_type: str | None
    handle: WorkflowHandle
    seconds: float = 0.0  # wall time to the result, where a test measures it


@dataclass
class Harness:
    """One platform root, one fake transport, one worker on a fresh task queue."""

    client: Client
    root: Path
    transport: FakeTransport = field(default_factory=lambda: FakeTransport(head=SHA))
    phase: str = "05"
    approval_key_file: Path | None = None
    heartbeat_timeout_seconds: int = 30
    task_queue: str = field(default_factory=lambda: f"tq-{uuid.uuid4()}")

    @property
    def settings(self) -> Settings:
        return Settings(
            temporal_address="",
            namespace="default",
            task_queue=self.task_queue,
            platform_root=self.root,
            state_dir=self.root / ".platform" / "state",
            phase=self.phase,
            approval_key_file=self.approval_key_file,
            heartbeat_timeout_seconds=self.heartbeat_timeout_seconds,
        )

    @contextlib.asynccontextmanager
    async def worker(self, workflows: Sequence[type] = ALL_WORKFLOWS) -> AsyncIterator[Worker]:
        worker = Worker(
            self.client,
            task_queue=self.task_queue,
            workflows=workflows,
            activities=build_activities(Deps(settings=self.settings, transport=self.transport, client=self.client)),
            # As worker.py runs it: a cancel during compose up is seen within seconds.
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        )
        async with worker:
            yield worker
            # Module state workflows run on: end them while this worker can still take their
            # last task, which would otherwise stop the shared server from skipping time.
            for module in (self.root / "modules").iterdir():
                with contextlib.suppress(RPCError):
                    await self.client.get_workflow_handle(module_state_id(self.task_queue, module.name)).terminate()

    async def start(self, request: Any, workflow_id: str | None = None) -> WorkflowHandle:
        return await self.client.start_workflow(
            "ApplyWorkflow", request, id=workflow_id or f"apply-{uuid.uuid4()}", task_queue=self.task_queue
        )

    async def outcome(self, handle: WorkflowHandle) -> Outcome:
        try:
            result = await handle.result()
        except WorkflowFailureError as e:
            assert isinstance(e.cause, ApplicationError), e.cause
            assert e.cause.non_retryable
            return Outcome(e.cause.details[0]["status"], e.cause.details[0], e.cause.type, handle)
        data = result if isinstance(result, dict) else result.model_dump()
        return Outcome(data["status"], data, None, handle)

    async def apply(self, request: Any) -> Outcome:
        async with self.worker():
            return await self.outcome(await self.start(request))


@pytest.fixture
def harness(ts_env, tmp_path) -> Harness:
    write_platform(tmp_path)
    return Harness(client=ts_env.client, root=tmp_path)
