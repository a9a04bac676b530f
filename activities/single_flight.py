"""One run of a host-changing command per activity, however many attempts the server starts.

When the server loses touch with a worker for longer than the heartbeat
timeout, it starts another attempt while the first may still run here. A later
attempt of the same activity (same workflow run and activity id) on this
worker therefore waits for the run under way, or takes the result of one that
finished recently, instead of running the command again.

A run of the same workflow run still going when its next command starts is an
orphan the workflow has moved past (it asked to cancel it): it is killed, and
waited for, first. A run of another workflow is never killed, since the
project lock's hand-over is a signal anyone with namespace access can forge:
the newcomer waits for it instead. Only successes are kept, nothing outlives
the process, and across workers the host agent answers compose up once per run.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from temporalio import activity

from activities.base import heartbeating
from platformctl.models import ComposeUpResult

# A finished run is asked for again once the server is back and has timed the
# attempt out (heartbeat timeout + retry backoff): keep it through long outages.
KEEP_DONE_S = 3600.0
KEEP_DONE_MAX = 256  # a result is facts only (no output): a few KiB at most
# A run whose attempt the server dropped is killed unless a later attempt takes
# it over by then (the next one comes within the retry backoff, <= 10 s).
ADOPT_WITHIN_S = 60.0

Key = tuple[str, str, str]  # workflow id, run id, activity id
Project = tuple[str, str]  # host name, compose project


@dataclass
class _Run:
    task: asyncio.Task[ComposeUpResult]
    project: Project
    waiters: int = 0
    reaper: asyncio.TimerHandle | None = None


class SingleFlight:
    """The compose runs on this worker (compose up and the image rollback share one)."""

    def __init__(self) -> None:
        self._running: dict[Key, _Run] = {}
        self._done: OrderedDict[Key, tuple[float, ComposeUpResult]] = OrderedDict()

    async def run(
        self, project: Project, body: Callable[[], Coroutine[Any, Any, ComposeUpResult]]
    ) -> ComposeUpResult:
        """`body()` once per activity; this attempt heartbeats while it waits for it."""
        info = activity.info()
        key = (info.workflow_id or "", info.workflow_run_id or "", info.activity_id)
        self._expire()
        done = self._done.get(key)
        if done is not None:
            activity.logger.warning(
                "attempt %d of %s: the command already ran on this worker for an earlier attempt; "
                "returning that result instead of running it again", info.attempt, info.activity_type,
            )
            return done[1]
        run = self._running.get(key)
        if run is None:
            await self._after_others(project, key)
            run = self._running.get(key)  # an attempt that came meanwhile may have started it
        if run is None:
            run = _Run(asyncio.create_task(body()), project)
            self._running[key] = run
            run.task.add_done_callback(functools.partial(self._finished, key))
        else:
            activity.logger.warning(
                "attempt %d of %s: an earlier attempt's command still runs on this worker; waiting for it "
                "instead of running it again", info.attempt, info.activity_type,
            )
        run.waiters += 1
        try:
            async with heartbeating():
                return await asyncio.shield(run.task)
        except asyncio.CancelledError:
            if not run.task.done():
                await self._cancelled(key, run)
            raise
        finally:
            run.waiters -= 1

    async def _cancelled(self, key: Key, run: _Run) -> None:
        info = activity.info()
        details = activity.cancellation_details()
        # not_found / timed_out: the server dropped this attempt, not the activity.
        dropped = details is not None and (details.not_found or details.timed_out)
        policy = info.retry_policy
        later = policy is None or policy.maximum_attempts == 0 or info.attempt < policy.maximum_attempts
        if dropped and later:
            activity.logger.warning(
                "attempt %d of %s dropped by the server: its command keeps running for the next attempt",
                info.attempt, info.activity_type,
            )
            if run.reaper is not None:
                run.reaper.cancel()
            run.reaper = asyncio.get_running_loop().call_later(ADOPT_WITHIN_S, self._reap, key, run)
            return
        # A cancel request, a worker shutdown, or no attempt left: the command
        # must be gone on the host before this attempt reports.
        run.task.cancel()
        await asyncio.wait([run.task])

    async def _after_others(self, project: Project, key: Key) -> None:
        """Kill this workflow run's orphans of `project`, and wait, heartbeating, until no
        command of `project` runs on this worker."""
        for other, run in self._running.items():
            if run.project == project and other[:2] == key[:2]:
                activity.logger.warning(
                    "killing a command on %s/%s that the server has stopped waiting for: "
                    "the next command of this apply must not overlap it", *project,
                )
                run.task.cancel()
        while others := [run.task for run in self._running.values() if run.project == project]:
            activity.logger.warning(
                "a command of %s/%s still runs on this worker: waiting for it to end "
                "(the next command of that project must not overlap it)", *project,
            )
            async with heartbeating():
                await asyncio.wait(others)

    def _reap(self, key: Key, run: _Run) -> None:
        if run.waiters == 0 and not run.task.done():
            activity.logger.warning(
                "no later attempt took over the command of %s within %.0f s: killing it", key, ADOPT_WITHIN_S
            )
            run.task.cancel()

    def _finished(self, key: Key, task: asyncio.Task[ComposeUpResult]) -> None:
        run = self._running.pop(key)
        if run.reaper is not None:
            run.reaper.cancel()
        if task.cancelled() or task.exception() is not None:  # also marks an orphan's error as seen
            return
        self._done[key] = (time.monotonic(), task.result())
        self._expire()

    def _expire(self) -> None:
        cutoff = time.monotonic() - KEEP_DONE_S
        while self._done:
            at, _ = next(iter(self._done.values()))
            if at >= cutoff and len(self._done) <= KEEP_DONE_MAX:
                return
            self._done.popitem(last=False)

