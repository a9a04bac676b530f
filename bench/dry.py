"""6. Throughput: N dry runs started at once (phase gate closed) vs N floor
workflows of the dry run's activities started at once, same server."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from temporalio.client import WorkflowHandle

from bench.history import events, profile
from bench.overhead import apply_request, apply_shape, finished
from bench.report import met, row
from bench.stack import Platform, floor_worker, platform_worker_task


async def _burst(starts: list[Callable[[], Awaitable[WorkflowHandle]]], want: str | None) -> float:
    began = time.perf_counter()
    handles = await asyncio.gather(*(start() for start in starts))
    await asyncio.gather(*(finished(h, want) for h in handles))
    return time.perf_counter() - began


async def measure(platform: Platform, n: int, runs: int) -> dict[str, float]:
    names = platform.host_names
    modules = [f"dry-{i}" for i in range(n)]
    for i, module in enumerate(modules):
        platform.module(module, names[i % len(names)])
    queue, floor_queue = "bench-dry", "bench-dry-floor"
    ours, floor = [], []
    async with platform_worker_task(platform, queue, phase=""), floor_worker(platform, floor_queue):
        dry, handle = await apply_shape(platform, queue, apply_request(modules[0]), "dry_run")  # and warm-up
        print(f"  dry run: {dry.describe()}\n           {' '.join(dry.names)}")
        await finished(await platform.floor(floor_queue, len(dry.kinds)))
        for _ in range(runs):
            ours.append(await _burst(
                [lambda m=m: platform.start(queue, apply_request(m), "dry") for m in modules], "dry_run"))
            floor.append(await _burst([lambda: platform.floor(floor_queue, len(dry.kinds))] * n, None))
    o, f = statistics.median(ours), statistics.median(floor)
    ratio = f / o  # rates: n/o over n/f
    print(row("dry_throughput_vs_floor", ratio,
              f"{n} dry runs {o:.2f} s ({n / o:.1f}/s) vs {n} floors {f:.2f} s ({n / f:.1f}/s) (median of {runs})"))
    if not met("dry_throughput_vs_floor", ratio):
        print("  profile of one dry run (alone):\n" + profile(await events(handle)))
    return {"dry_throughput_vs_floor": ratio}
