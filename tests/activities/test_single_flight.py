"""single_flight: a later attempt of one activity never runs its command again on this worker."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from temporalio.activity import ActivityCancellationDetails
from temporalio.common import RetryPolicy
from temporalio.testing import ActivityEnvironment

import activities.single_flight as single_flight
from activities.remote_steps import RemoteSteps
from activities.single_flight import SingleFlight
from platformctl.models import Approval, ComposeUpInput, ComposeUpResult, RemoteRecord
from platformctl.target import derive_target
from platformctl.transport import RemoteOutput
from platformctl.transport.fake import agent_answer
from tests.activities.state_helpers import StubDeps
from tests.platform_files import SHA, write_platform

DROPPED = ActivityCancellationDetails(not_found=True)  # the server timed the attempt out
RETRY = RetryPolicy(maximum_attempts=4)
PROJECT = ("rs2000", "core")


RUN_1, RUN_2, RUN_9 = (f"00000000-0000-4000-8000-00000000000{n}" for n in (1, 2, 9))


def attempt(n: int, activity_id: str = "7", run_id: str = RUN_1) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, attempt=n, activity_id=activity_id, workflow_id="apply-1", workflow_run_id=run_id,
        activity_type="compose_up", retry_policy=RETRY,
    )
    return env


class Command:
    """A remote command: counts its runs, runs until released, knows when it was killed."""

    def __init__(self, fail: bool = False, log: list[str] | None = None, name: str = "up") -> None:
        self.runs = 0
        self.killed = 0
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.fail = fail
        self.log = log if log is not None else []
        self.name = name

    async def __call__(self) -> ComposeUpResult:
        self.runs += 1
        self.log.append(f"{self.name} started")
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.killed += 1
            self.log.append(f"{self.name} killed")
            raise
        if self.fail:
            raise ConnectionRefusedError("host refused")
        return ComposeUpResult(
            executed=True, command=f"up #{self.runs}",
            remote=RemoteRecord(returncode=0, duration_s=0.1),
        )


def start(
    env: ActivityEnvironment, flight: SingleFlight, command: Command, project: tuple[str, str] = PROJECT
) -> asyncio.Task[ComposeUpResult]:
    return asyncio.ensure_future(env.run(flight.run, project, command))


async def test_a_later_attempt_waits_for_the_command_the_dropped_attempt_started():
    flight, command = SingleFlight(), Command()
    first_env = attempt(1)
    first = start(first_env, flight, command)
    await command.started.wait()
    first_env.cancel(DROPPED)  # the server timed attempt 1 out: its heartbeat got "not found"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert command.killed == 0  # still running for the next attempt

    second = start(attempt(2), flight, command)
    await asyncio.sleep(0.05)
    command.release.set()
    assert (await second).command == "up #1"
    assert (command.runs, command.killed) == (1, 0)


async def test_a_later_attempt_takes_the_result_of_a_command_that_finished_unreported():
    flight, command = SingleFlight(), Command()
    command.release.set()
    first = await attempt(1).run(flight.run, PROJECT, command)  # its report to the server was lost

    again = await attempt(2).run(flight.run, PROJECT, command)

    assert again == first and command.runs == 1


async def test_two_attempts_in_flight_at_once_share_one_command():
    flight, command = SingleFlight(), Command()
    first, second = start(attempt(1), flight, command), start(attempt(2), flight, command)
    await command.started.wait()
    command.release.set()
    assert await first == await second
    assert command.runs == 1


async def test_other_activities_and_runs_get_their_own_command():
    flight, command = SingleFlight(), Command()
    command.release.set()
    await attempt(1).run(flight.run, PROJECT, command)
    await attempt(1, activity_id="8").run(flight.run, PROJECT, command)  # the same workflow's next compose up
    await attempt(1, run_id=RUN_2).run(flight.run, PROJECT, command)  # a reset or a new apply
    assert command.runs == 3


async def test_a_failed_command_runs_again_on_the_next_attempt():
    flight, command = SingleFlight(), Command(fail=True)
    command.release.set()
    with pytest.raises(ConnectionRefusedError):
        await attempt(1).run(flight.run, PROJECT, command)
    with pytest.raises(ConnectionRefusedError):
        await attempt(2).run(flight.run, PROJECT, command)
    assert command.runs == 2


@pytest.mark.parametrize(
    "details",
    [ActivityCancellationDetails(cancel_requested=True), ActivityCancellationDetails(worker_shutdown=True)],
    ids=["cancel requested", "worker shutdown"],
)
async def test_a_cancelled_attempt_kills_the_command_before_it_returns(details):
    flight, command = SingleFlight(), Command()
    env = attempt(1)
    task = start(env, flight, command)
    await command.started.wait()
    env.cancel(details)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert command.killed == 1  # gone before the attempt reports (WAIT_CANCELLATION_COMPLETED)
    command.release.set()
    await attempt(2).run(flight.run, PROJECT, command)
    assert command.runs == 2  # a killed command is no result to reuse


async def test_the_last_attempt_dropped_kills_the_command():
    flight, command = SingleFlight(), Command()
    env = attempt(RETRY.maximum_attempts)  # no later attempt will come to take it over
    task = start(env, flight, command)
    await command.started.wait()
    env.cancel(DROPPED)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert command.killed == 1


async def test_a_command_no_later_attempt_takes_over_is_killed(monkeypatch):
    monkeypatch.setattr(single_flight, "ADOPT_WITHIN_S", 0.1)
    flight, command = SingleFlight(), Command()
    env = attempt(1)
    task = start(env, flight, command)
    await command.started.wait()
    env.cancel(DROPPED)
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)
    assert command.killed == 1


async def test_a_command_taken_over_in_time_is_not_killed(monkeypatch):
    monkeypatch.setattr(single_flight, "ADOPT_WITHIN_S", 0.2)
    flight, command = SingleFlight(), Command()
    env = attempt(1)
    first = start(env, flight, command)
    await command.started.wait()
    env.cancel(DROPPED)
    with pytest.raises(asyncio.CancelledError):
        await first
    second = start(attempt(2), flight, command)
    await asyncio.sleep(0.4)  # past the first attempt's deadline
    command.release.set()
    assert (await second).command == "up #1" and command.killed == 0


@pytest.mark.parametrize("told", [True, False], ids=["attempt told it was dropped", "attempt not told yet"])
async def test_an_orphan_of_the_same_apply_is_killed_before_its_next_command_of_the_project(told):
    # A cancel requested as the server timed the attempt out: no retry comes, and the
    # workflow goes on to its rollback,
    # perhaps before this worker's next heartbeat tells the attempt.
    flight, log = SingleFlight(), []
    orphan, rollback, other = Command(log=log, name="up"), Command(log=log, name="rollback"), Command(log=log)
    env = attempt(1)
    first = start(env, flight, orphan)
    await orphan.started.wait()
    if told:
        env.cancel(DROPPED)
        with pytest.raises(asyncio.CancelledError):
            await first
    elsewhere = start(attempt(1, run_id=RUN_9), flight, other, project=("rs2000", "media"))
    await other.started.wait()
    assert orphan.killed == 0  # another project's command leaves it alone

    rollback.release.set()
    await attempt(1, activity_id="12").run(flight.run, PROJECT, rollback)
    assert log == ["up started", "up started", "up killed", "rollback started"]
    with pytest.raises(asyncio.CancelledError):
        await first
    other.release.set()
    await elsewhere


async def test_another_runs_live_command_is_never_killed_the_next_one_waits_for_it():
    """A forged hand-over of the project lock starts the next apply's compose up while the
    holder's still runs: killing the holder's made its retry run it again, overlapping."""
    flight, log = SingleFlight(), []
    holder, newcomer = Command(log=log, name="holder"), Command(log=log, name="newcomer")
    first = start(attempt(1), flight, holder)
    await holder.started.wait()
    second = start(attempt(1, run_id=RUN_2), flight, newcomer)
    await asyncio.sleep(0.2)
    assert log == ["holder started"]
    holder.release.set()
    newcomer.release.set()
    assert (await first).command == "up #1" and (await second).command == "up #1"
    assert log == ["holder started", "newcomer started"] and holder.runs == 1 and holder.killed == 0


@pytest.mark.parametrize(
    "bound", [("KEEP_DONE_MAX", 2), ("KEEP_DONE_S", 0.0)], ids=lambda b: b[0]
)
async def test_finished_results_are_kept_within_bounds(monkeypatch, bound):
    monkeypatch.setattr(single_flight, *bound)
    flight, command = SingleFlight(), Command()
    command.release.set()
    for activity_id in ("1", "2", "3"):
        await attempt(1, activity_id=activity_id).run(flight.run, PROJECT, command)
    await attempt(2, activity_id="3").run(flight.run, PROJECT, command)
    assert command.runs == (4 if bound[0] == "KEEP_DONE_S" else 3)  # the newest kept unless expired
    await attempt(2, activity_id="1").run(flight.run, PROJECT, command)
    assert command.runs == (5 if bound[0] == "KEEP_DONE_S" else 4)  # the oldest forgotten


class OneUp:
    """A transport whose compose up takes until released; counts the runs."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()

    async def run(self, host: Any, command: Any, *, timeout_s: float) -> RemoteOutput:
        self.runs += 1
        await self.release.wait()
        return agent_answer(
            command, RemoteOutput(returncode=0, stdout="", stderr="Container core-redis-1  Started", duration_s=1.0)
        )


async def test_compose_up_runs_once_across_attempts(settings):
    write_platform(settings.platform_root)
    inp = ComposeUpInput(
        target=derive_target(settings, "honcho-redis"), timeout_seconds=60, module="honcho-redis", source_sha=SHA,
        approval=Approval(approved_sha=SHA),
    )
    transport = OneUp()
    up = RemoteSteps(StubDeps(settings, transport)).compose_up  # type: ignore[arg-type]
    first_env = attempt(1)
    first = asyncio.ensure_future(first_env.run(up, inp))
    while transport.runs == 0:
        await asyncio.sleep(0.01)
    first_env.cancel(DROPPED)
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.ensure_future(attempt(2).run(up, inp))
    transport.release.set()
    assert (await second).remote.progress == ["Container core-redis-1 Started"]
    assert (await attempt(3).run(up, inp)).remote.progress == ["Container core-redis-1 Started"]
    assert transport.runs == 1
