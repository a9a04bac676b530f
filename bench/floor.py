"""The SDK floor, as issue 9 defines it: a workflow of as many sequential no-op
activities (scheduled ones, each a server round trip) as the apply runs, local
ones counted too. Its own module with plain imports, so that it can run in the
workflow sandbox (the SDK's default) as well as without it.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

TIMEOUT = timedelta(seconds=30)


@activity.defn
async def noop() -> None:
    pass


@workflow.defn(name="BenchFloor")
class Floor:
    @workflow.run
    async def run(self, count: int) -> None:
        for _ in range(count):
            await workflow.execute_activity(noop, start_to_close_timeout=TIMEOUT)
