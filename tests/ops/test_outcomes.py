"""What an operator sees of each apply: one outcome line, one line per policy
refusal (no traceback), Prometheus counts, and notifications for failures."""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.request
import uuid

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.testing import ActivityEnvironment

from activities.base import StepActivities, step
from platformctl.client import DATA_CONVERTER
from platformctl.metrics import runtime_from_env
from platformctl.outcomes import ApprovalMismatch
from platformctl.transport.fake import failed
from tests.activities.state_helpers import StubDeps
from tests.conftest import Harness
from tests.ops.conftest import free_port
from tests.platform_files import OTHER_SHA, apply_input, approval, plan, write_platform


@pytest.fixture
def harness(own_ts_env, tmp_path) -> Harness:
    """On a time-skipping server of this file's own: a test here skips 2 h."""
    write_platform(tmp_path)
    return Harness(client=own_ts_env.client, root=tmp_path)


def lines(caplog, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


async def test_each_outcome_is_one_info_line(harness, caplog):
    caplog.set_level(logging.INFO)
    async with harness.worker():
        applied = await harness.start(apply_input())
        await harness.outcome(applied)
        blocked = await harness.start(apply_input(plan(source_dirty=True)))
        await harness.outcome(blocked)

    outcomes = lines(caplog, "platform.apply")
    assert [r.levelno for r in outcomes] == [logging.INFO, logging.INFO]
    assert re.fullmatch(
        rf"apply honcho-redis@rs2000 applied exit=9 in \d+\.\ds workflow={applied.id}", outcomes[0].getMessage()
    ), outcomes[0].getMessage()
    assert re.fullmatch(
        rf"apply honcho-redis@- blocked exit=3 in \d+\.\ds workflow={blocked.id}: .*dirty.*", outcomes[1].getMessage()
    ), outcomes[1].getMessage()


async def test_the_outcome_line_counts_the_time_the_apply_waited(harness, caplog):
    caplog.set_level(logging.INFO)
    out = await harness.apply(apply_input(approval_=None, approval_timeout_seconds=7200))
    assert out.status == "approval_expired"
    (line,) = lines(caplog, "platform.apply")
    # From the workflow's start by the server's clock, which the test server skipped 2 h.
    assert re.search(r" exit=\d+ in 720\d\.\ds ", line.getMessage()), line.getMessage()


async def test_a_policy_refusal_is_one_warning_line_not_a_traceback(harness, caplog):
    caplog.set_level(logging.DEBUG)
    out = await harness.apply(apply_input(plan(source_dirty=True)))
    assert (out.status, out.error_type) == ("blocked", "PolicyViolation")  # the workflow still maps the type

    (refusal,) = lines(caplog, "platform.activity")
    assert refusal.levelno == logging.WARNING and refusal.exc_info is None
    assert refusal.getMessage().startswith("activity validate_plan ends the apply as blocked: ")
    assert "dirty" in refusal.getMessage() and f"workflow={out.handle.id}" in refusal.getMessage()
    sdk = [r for r in caplog.records if r.getMessage().startswith("Completing activity as failed")]
    assert sdk and all(r.levelno == logging.DEBUG for r in sdk)


class Refuses(StepActivities):
    @step
    async def run(self, inp: None) -> None:
        raise ApprovalMismatch("approval names another SHA")


async def test_a_refusal_keeps_its_type_message_and_retry_and_is_benign():
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(Refuses(StubDeps(settings=None)).run, None)  # type: ignore[arg-type]
    failure = caught.value
    assert (failure.type, failure.message, failure.non_retryable) == (
        "ApprovalMismatch", "approval names another SHA", True
    )
    assert failure.category == ApplicationErrorCategory.BENIGN


async def test_failed_applies_and_rollbacks_are_notified(harness, sink, monkeypatch):
    monkeypatch.setenv("PLATFORM_NOTIFY_URL", sink.url)
    async with harness.worker():
        await harness.outcome(await harness.start(apply_input()))
        await harness.outcome(await harness.start(apply_input(plan(source_dirty=True))))
        assert sink.received == []  # applied and blocked are nobody's incident

        harness.transport.script = {"compose_up": [failed(1, "pull access denied password=hunter2")]}
        harness.transport.head = OTHER_SHA
        handle = await harness.start(apply_input(plan(sha=OTHER_SHA), approval(sha=OTHER_SHA)))
        out = await harness.outcome(handle)
    assert out.status == "remote_failed"
    assert sink.events() == ["rollback", "apply_failed"]
    for _, body in sink.received:
        assert (body["module"], body["host"], body["status"], body["exitCode"]) == (
            "honcho-redis", "rs2000", "remote_failed", 4
        )
        assert body["workflow_id"] == handle.id and body["at"]
        assert "hunter2" not in str(body)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the one series of `name` that has all `labels`."""
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    return None


async def test_outcomes_are_counted_in_prometheus_metrics(ts_env, tmp_path):
    port = free_port()
    runtime = runtime_from_env({"PLATFORM_METRICS_ADDRESS": f"127.0.0.1:{port}"})
    assert runtime is not None
    client = await Client.connect(
        ts_env.client.service_client.config.target_host, namespace="default",
        data_converter=DATA_CONVERTER, runtime=runtime,
    )
    write_platform(tmp_path)
    harness = Harness(client=client, root=tmp_path)
    async with harness.worker():
        # Started and awaited through the test server's own client, so its clock skips.
        handle = await ts_env.client.start_workflow(
            "ApplyWorkflow", apply_input(), id=f"apply-{uuid.uuid4()}", task_queue=harness.task_queue
        )
        assert (await handle.result())["status"] == "applied"
        text = await asyncio.to_thread(scrape, port)

    assert sample(text, "platform_apply_outcomes_total", status="applied", module="honcho-redis") == 1
    assert sample(text, "platform_apply_duration_seconds_count", status="applied") == 1
    assert "temporal_activity_execution_latency" in text  # the SDK's own metrics, same endpoint


def test_a_metrics_address_may_name_its_host():
    # The SDK binds only an IP address: `localhost:9464` was refused as invalid syntax.
    port = free_port()
    runtime = runtime_from_env({"PLATFORM_METRICS_ADDRESS": f"localhost:{port}"})
    assert runtime is not None  # kept: the endpoint goes with it
    with urllib.request.urlopen(f"http://localhost:{port}/metrics", timeout=5) as response:
        assert response.status == 200


def test_a_metrics_address_that_is_not_host_port_stops_the_worker():
    with pytest.raises(SystemExit, match="host:port"):
        runtime_from_env({"PLATFORM_METRICS_ADDRESS": "9464"})
