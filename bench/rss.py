"""5. Memory: `worker.py`'s VmRSS idle, with 200 applies waiting for approval, with 1000.

Runs last: the waiting applies stay open on the server (no worker polls
their queue afterwards) until the server goes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.overhead import apply_request
from bench.report import row
from bench.stack import Platform, worker_process

MODULE = "rss"
QUEUE = "bench-rss"
WAITING = f"TaskQueue = '{QUEUE}' AND PlatformStatus = 'awaiting_approval'"
SETTLE_S = 2.0


async def _waiting(platform: Platform, total: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while (await platform.client.count_workflows(WAITING)).count < total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {total} applies waiting for approval after {timeout_s} s")
        await asyncio.sleep(0.5)
    await asyncio.sleep(SETTLE_S)  # their approval notifications ran; the worker is idle again


async def _start(platform: Platform, n: int) -> None:
    for _ in range(0, n, 100):
        await asyncio.gather(*(platform.start(QUEUE, apply_request(MODULE, approved=False), "rss") for _ in range(100)))


async def measure(platform: Platform, log_dir: Path) -> dict[str, float]:
    platform.module(MODULE, platform.host_names[0])
    results = {}
    with worker_process(platform, QUEUE, log_dir / "worker-rss.log") as worker:
        await asyncio.sleep(SETTLE_S)
        results["rss_idle_mb"] = worker.rss_mb()
        print(row("rss_idle_mb", results["rss_idle_mb"], f"worker.py pid {worker.proc.pid}, polling, no workflows"))
        began = time.monotonic()
        await _start(platform, 200)
        await _waiting(platform, 200)
        results["rss_200_mb"] = worker.rss_mb()
        print(row("rss_200_mb", results["rss_200_mb"], f"200 waiting (reached in {time.monotonic() - began:.0f} s)"))
        began = time.monotonic()
        await _start(platform, 800)
        await _waiting(platform, 1000)
        results["rss_1000_mb"] = worker.rss_mb()
        print(row("rss_1000_mb", results["rss_1000_mb"], f"1000 waiting (reached in {time.monotonic() - began:.0f} s)"))
    return results
