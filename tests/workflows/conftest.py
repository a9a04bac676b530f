from __future__ import annotations

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from platformctl.client import SEARCH_ATTRIBUTES
from tests.conftest import VENV_BIN

# A module's health window short enough for a real server's real time.
FAST_HEALTH = {"stable_seconds": 1, "timeout_seconds": 5, "poll_seconds": 1}


@pytest.fixture(scope="module")
async def dev_env():
    """A real dev server, for the tests that record module state: the time-skipping
    test server answered a signal-with-start to a module's running state workflow by
    starting a second run beside the first, which the real server never does."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(VENV_BIN / "temporal"),
        data_converter=pydantic_data_converter,
        ui=False,
        search_attributes=list(SEARCH_ATTRIBUTES),
    )
    yield env
    await env.shutdown()
