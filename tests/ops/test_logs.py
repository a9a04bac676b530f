"""The worker's log setup: asyncssh quiet, and JSON lines on request."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid

import pytest
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from platformctl.logs import JsonFormatter, setup_logging
from platformctl.metrics import runtime_from_env


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("asyncssh").level)
    saved_info = (activity.logger.activity_info_on_message, workflow.logger.workflow_info_on_message)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("asyncssh").setLevel(saved[2])
    activity.logger.activity_info_on_message, workflow.logger.workflow_info_on_message = saved_info


@pytest.mark.parametrize("fmt", [None, "text", "json"])
def test_asyncssh_connection_chatter_is_not_logged(restore_logging, fmt):
    setup_logging(fmt)
    assert not logging.getLogger("asyncssh").isEnabledFor(logging.INFO)
    assert logging.getLogger("asyncssh").isEnabledFor(logging.WARNING)
    assert logging.getLogger("platform.apply").isEnabledFor(logging.INFO)


def test_json_format_is_one_object_per_line_with_the_sdk_extras(restore_logging):
    setup_logging("json")
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler.formatter, JsonFormatter)
    assert not activity.logger.activity_info_on_message  # the extras carry it
    record = logging.LogRecord("temporalio.activity", logging.WARNING, __file__, 1, "refused %s", ("x",), None)
    record.temporal_activity = {"activity_type": "validate_plan", "workflow_id": "apply-1"}
    record.__temporal_error_identifier = "ActivityFailure"  # the SDK's private marker stays out
    line = handler.format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data.pop("time").endswith("+00:00")
    assert data == {
        "level": "WARNING", "logger": "temporalio.activity", "message": "refused x",
        "temporal_activity": {"activity_type": "validate_plan", "workflow_id": "apply-1"},
    }


def test_json_keeps_an_exception_on_its_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "failed" and "ValueError: boom" in data["exception"]


def test_an_unknown_format_stops_the_worker(restore_logging):
    with pytest.raises(SystemExit, match="PLATFORM_LOG_FORMAT"):
        setup_logging("yaml")


@workflow.defn(name="FailingTaskWorkflow", sandboxed=False)
class FailingTask:
    @workflow.run
    async def run(self) -> None:
        raise RuntimeError("not a workflow failure: the task fails, and the SDK core says so")


async def test_the_sdk_cores_own_warnings_go_through_our_handlers(dev_env, caplog):
    # By default the core (Rust) writes them to stderr itself: plain text in a JSON log.
    runtime = runtime_from_env({})
    client = await Client.connect(dev_env.client.service_client.config.target_host, runtime=runtime)
    queue = f"core-logs-{uuid.uuid4()}"
    with caplog.at_level(logging.WARNING):
        async with Worker(client, task_queue=queue, workflows=[FailingTask]):
            handle = await client.start_workflow("FailingTaskWorkflow", id=queue, task_queue=queue)
            for _ in range(100):
                if any(r.name.startswith("temporalio.core") for r in caplog.records):
                    break
                await asyncio.sleep(0.1)
            await handle.terminate()
    core = [r for r in caplog.records if r.name.startswith("temporalio.core")]
    assert core and "Failing workflow task" in core[0].getMessage(), [r.name for r in caplog.records]
