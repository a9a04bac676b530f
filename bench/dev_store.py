"""The embedded dev server's SQLite store: default journal vs WAL, same run.

Starts `temporal server start-dev` exactly as `worker.py --dev` does (its
function, its flags), once with worker.DEV_SERVER_SQLITE_PRAGMAS and once
without, alternating A B B A, and on each times the SDK floor the issue
names: a workflow of 7 sequential no-op activities (median of N in a row),
and 40 of them started at once (wall time).

    .venv/bin/python bench/dev_store.py [-n 20]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio import activity, workflow  # noqa: E402
from temporalio.client import Client  # noqa: E402
from temporalio.worker import UnsandboxedWorkflowRunner, Worker  # noqa: E402

import worker as platform_worker  # noqa: E402
from platformctl.config import Settings  # noqa: E402

STEPS = 7  # the activities of an apply's happy path


@activity.defn
async def noop() -> None:
    pass


@workflow.defn
class Floor:
    @workflow.run
    async def run(self) -> None:
        for _ in range(STEPS):
            await workflow.execute_activity(noop, start_to_close_timeout=timedelta(seconds=30))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(pragmas: tuple[str, ...], n: int) -> tuple[float, float]:
    platform_worker.DEV_SERVER_SQLITE_PRAGMAS = pragmas
    with tempfile.TemporaryDirectory() as state:
        address = f"localhost:{free_port()}"
        settings = Settings(
            temporal_address=address, namespace="default", task_queue="bench", platform_root=Path(state),
            state_dir=Path(state), phase="",
        )
        proc = platform_worker.start_dev_server(settings)
        assert proc is not None
        try:
            client = await Client.connect(address)
            queue = f"floor-{uuid.uuid4()}"
            # Unsandboxed: this script's imports would fail sandbox validation; both stores get the same.
            runner = UnsandboxedWorkflowRunner()
            async with Worker(client, task_queue=queue, workflows=[Floor], activities=[noop], workflow_runner=runner):
                async def one() -> float:
                    started = time.perf_counter()
                    await client.execute_workflow(Floor.run, id=f"f-{uuid.uuid4()}", task_queue=queue)
                    return time.perf_counter() - started

                await one()  # warm up
                median = statistics.median([await one() for _ in range(n)])
                started = time.perf_counter()
                await asyncio.gather(*(one() for _ in range(40)))
                burst = time.perf_counter() - started
            return median, burst
        finally:
            proc.terminate()
            proc.wait(timeout=20)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    n = parser.parse_args().n
    wal = platform_worker.DEV_SERVER_SQLITE_PRAGMAS
    results: dict[str, list[tuple[float, float]]] = {"default": [], "wal": []}
    for name in ("default", "wal", "wal", "default"):
        results[name].append(await measure(() if name == "default" else wal, n))
    for name, runs in results.items():
        medians = ", ".join(f"{m * 1000:.0f}" for m, _ in runs)
        bursts = ", ".join(f"{b:.2f}" for _, b in runs)
        print(f"{name:8} 7-activity workflow median ms: {medians}; 40 at once s: {bursts}")
    d, w = results["default"], results["wal"]
    ratio = statistics.mean(m for m, _ in w) / statistics.mean(m for m, _ in d)
    burst_ratio = statistics.mean(b for _, b in w) / statistics.mean(b for _, b in d)
    print(f"wal_vs_default_latency={ratio:.2f} wal_vs_default_burst={burst_ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
