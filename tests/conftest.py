from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import Deps, build_activities
from platformctl.client import SEARCH_ATTRIBUTES
from platformctl.config import Settings
from platformctl.module_state import module_state_id
from platformctl.transport.fake import FakeTransport
from tests.platform_files import SHA, write_platform

# Real OpenSSH sshd hosts with the stand-in docker (see tests/sshd.py).
from tests.sshd import sshd_host, sshd_host2, sshd_server, sshd_server2  # noqa: F401
from worker import HEARTBEAT_THROTTLE
from workflows.registry import ALL_WORKFLOWS

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
async def ts_env():
    """The time-skipping test server from the venv: long waits cost no real time."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(VENV_BIN / "temporal-test-server"),
        data_converter=pydantic_data_converter,
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
