"""The activity boundary: every failure leaves as a typed, redacted ApplicationError."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.base import Deps, StepActivities, step
from platformctl.outcomes import PolicyViolation
from platformctl.transport import AuthenticationFailed, ConnectFailed
from tests.activities.state_helpers import StubDeps, settings_for

SECRET = "hunter2-boundary-secret"


class Raises(StepActivities):
    def __init__(self, error: Exception) -> None:
        super().__init__(deps=StubDeps(settings=None))  # type: ignore[arg-type]
        self.error = error

    @step
    async def run(self, inp: None) -> None:
        raise self.error


async def failure_of(error: Exception) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(Raises(error).run, None)
    return caught.value


@pytest.mark.parametrize(
    "error, error_type, non_retryable",
    [
        (PolicyViolation(f"bad path password={SECRET}"), "PolicyViolation", True),
        (AuthenticationFailed(f"refused, password={SECRET}"), "RemoteFailed", True),
        (ConnectFailed(f"refused, password={SECRET}"), "RemoteFailed", False),
        (KeyError(f"password={SECRET}"), "ToolError", False),
    ],
)
async def test_failures_are_typed_and_redacted(error, error_type, non_retryable):
    failure = await failure_of(error)
    assert (failure.type, failure.non_retryable) == (error_type, non_retryable)
    assert SECRET not in failure.message and "password=[REDACTED]" in failure.message
    # The unredacted original must not ride along as the stored cause.
    assert failure.__cause__ is None and failure.__suppress_context__


# ---- who may schedule an activity -------------------------------------------------


class Records(StepActivities):
    ran = False

    @step
    async def run(self, inp: None) -> None:
        Records.ran = True


class FakeClient:
    """Describes every workflow as running on `task_queue`."""

    def __init__(self, task_queue: str, workflow_type: str = "ApplyWorkflow") -> None:
        self.described = 0
        self.desc = SimpleNamespace(task_queue=task_queue, workflow_type=workflow_type)

    def get_workflow_handle(self, workflow_id, run_id=None):
        async def describe():
            self.described += 1
            return self.desc

        return SimpleNamespace(describe=describe)


def env_for(workflow_type: str | None, workflow_id: str | None = "apply-1") -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, workflow_type=workflow_type, workflow_id=workflow_id, workflow_run_id="run-1", task_queue="tq"
    )
    return env


async def run_as(env: ActivityEnvironment, client: FakeClient, tmp_path) -> ApplicationError | None:
    Records.ran = False
    deps = Deps(settings=settings_for(tmp_path), transport=None, client=client)  # type: ignore[arg-type]
    try:
        await env.run(Records(deps).run, None)
    except ApplicationError as e:
        return e
    return None


@pytest.mark.parametrize("workflow_type, workflow_id", [("Rogue", "w"), (None, None), ("ApplyWorkflow", None)])
async def test_an_activity_not_scheduled_by_a_contract_workflow_runs_nothing(tmp_path, workflow_type, workflow_id):
    client = FakeClient("tq")
    refused = await run_as(env_for(workflow_type, workflow_id), client, tmp_path)
    assert refused is not None and refused.type == "PolicyViolation" and refused.non_retryable
    assert not Records.ran and client.described == 0


async def test_an_apply_workflow_on_another_task_queue_is_refused(tmp_path):
    refused = await run_as(env_for("ApplyWorkflow"), FakeClient("someone-elses-queue"), tmp_path)
    assert refused is not None and "not this worker's 'tq'" in refused.message and not Records.ran


async def test_a_confirmed_run_is_described_once(tmp_path):
    client = FakeClient("tq")
    deps = Deps(settings=settings_for(tmp_path), transport=None, client=client)  # type: ignore[arg-type]
    env = env_for("ApplyWorkflow")
    for _ in range(3):
        await env.run(Records(deps).run, None)
    assert Records.ran and client.described == 1
