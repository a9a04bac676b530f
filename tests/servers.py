"""The session's real Temporal dev servers: one of each per test process (xdist
worker), shared by every test of that process on task queues of its own.

`dev_server` (tests/e2e, tests/cli) holds no platform search attributes until a
worker registers them: `initial_custom_attributes` is what it held before any
did. `dev_env` has them from the start, for tests that run workers in-process.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from platformctl.client import DATA_CONVERTER, SEARCH_ATTRIBUTES

TEMPORAL_CLI = Path(sys.executable).parent / "temporal"
NAMESPACE = "default"


@dataclass
class DevServer:
    env: WorkflowEnvironment
    address: str
    initial_custom_attributes: dict[str, int]

    @property
    def client(self) -> Client:
        return self.env.client

    async def custom_attributes(self) -> dict[str, int]:
        listed = await self.client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=NAMESPACE)
        )
        return dict(listed.custom_attributes)


@pytest.fixture(scope="session")
async def dev_server():
    env = await WorkflowEnvironment.start_local(
        namespace=NAMESPACE,
        dev_server_existing_path=str(TEMPORAL_CLI),
        data_converter=DATA_CONVERTER,
        ui=False,
        dev_server_extra_args=[
            "--dynamic-config-value", "history.transferProcessorMaxPollRPS=10000",
            "--dynamic-config-value", "history.transferProcessorMaxPollHostRPS=10000",
        ],
    )
    try:
        server = DevServer(env, env.client.service_client.config.target_host, {})
        server.initial_custom_attributes = await server.custom_attributes()
        yield server
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
async def dev_env():
    """A real dev server, for the tests that record module state: the time-skipping
    test server answered a signal-with-start to a module's running state workflow by
    starting a second run beside the first, which the real server never does.
    One per test process; each test isolates itself on its own task queue."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL_CLI),
        data_converter=DATA_CONVERTER,
        ui=False,
        search_attributes=list(SEARCH_ATTRIBUTES),
    )
    yield env
    await env.shutdown()


