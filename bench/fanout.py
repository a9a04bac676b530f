"""2 and 3. Fan-out: 40 modules over the 4 hosts of bench/fanout_hosts.py, `up -d` 1 s each.

Ours is ReapplyWorkflow over the 40 modules (it re-applies a module's last
approved apply, so each module is applied once first, instantly, untimed).
One project per host: per-project serial, ideal 10 s; vs Ansible plain and
with Mitogen (bench/ansible_fanout.py) over the same hosts. One project per
module: nothing serialises; vs 40 floor workflows at once plus the 1 s compose.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import defaultdict
from pathlib import Path

from temporalio.client import WorkflowHandle

from bench.ansible_fanout import run_ansible
from bench.cpu import Cpu, server_pid
from bench.fanout_hosts import Fanout, fanout_hosts
from bench.history import Shape, children, events, profile, shape
from bench.overhead import apply_request, finished
from bench.report import met, row
from bench.stack import Platform, floor_worker, platform_worker_task

IDEAL_S = 10.0  # 10 services of one project, 1 s each, one after another
COMPOSE_S = 1.0


async def _platform(address: str, root: Path, fan: Fanout) -> Platform:
    platform = Platform(address, root, fan.hosts_yaml())
    await platform.connect()
    for host, up in fan.ups:  # a module's id is its service's name
        platform.module(up.service, host.name, up.service, up.compose_file)
    return platform


async def _seed(platform: Platform, queue: str, fan: Fanout) -> Shape:
    """Each module applied once with an instant `up -d`: what ReapplyWorkflow re-applies."""
    for host, up in fan.ups:
        host.sshd.set_behaviour(up.service, "succeed")
    handles = [await platform.start(queue, apply_request(up.service), "seed") for _, up in fan.ups]
    for handle in handles:
        await finished(handle, "applied")
    return shape(await events(handles[-1]))


async def _reapply(platform: Platform, queue: str, fan: Fanout, max_parallel: int) -> tuple[float, WorkflowHandle]:
    fan.reset()  # every service's `up -d` takes 1 s again
    modules = [up.service for _, up in fan.ups]
    cpu = Cpu.start(server_pid(platform.address))
    began = time.perf_counter()
    handle = await platform.client.start_workflow(
        "ReapplyWorkflow", {"modules": modules, "max_parallel": max_parallel},
        id=f"reapply-{uuid.uuid4().hex[:12]}", task_queue=queue,
    )
    result = await handle.result()
    seconds = time.perf_counter() - began
    print(f"  {cpu.split()}")
    outcomes = [entry["outcome"] for entry in result["results"]]
    if outcomes != ["applied"] * len(modules):
        raise RuntimeError(f"re-apply did not apply every module: {result['results']}")
    fan.check_ups()
    idle = [gap for host in fan.hosts for gap in host.idle_between_ups()]
    if idle:
        print(f"  a project idle between two `up -d` (its lock handed on, the next apply's steps before it): "
              f"median {statistics.median(idle):.2f} s, max {max(idle):.2f} s")
    return seconds, handle


async def _lanes(platform: Platform, handle: WorkflowHandle, serial: bool) -> str:
    """Per host: its applies' mean length and (`serial`: one project per host) the
    gaps between one apply's end and the next one's start, then one apply's profile."""
    kids = children(await events(handle))
    lanes: dict[str, list] = defaultdict(list)
    for kid in kids:
        lanes[kid.workflow_id.removeprefix("reapply-").split("-")[0]].append(kid)
    lines = ["  per lane (children of the ReapplyWorkflow; s since it started):"]
    for lane, runs in sorted(lanes.items()):
        runs.sort(key=lambda k: k.started_s)
        gaps = [b.started_s - a.closed_s for a, b in zip(runs, runs[1:], strict=False)]
        lines.append(
            f"    {lane}: {len(runs)} applies, first starts {runs[0].started_s:.2f}, "
            f"last ends {runs[-1].closed_s:.2f}, "
            f"mean apply {statistics.mean(k.closed_s - k.started_s for k in runs):.2f} (compose {COMPOSE_S:.0f}), "
            + (f"mean gap {statistics.mean(gaps) if gaps else 0:.3f}" if serial else "")
        )
    middle = sorted(kids, key=lambda k: k.started_s)[len(kids) // 2]
    lines.append(f"  profile of one child apply ({middle.workflow_id}):")
    lines.append(profile(await events(platform.client.get_workflow_handle(middle.workflow_id))))
    return "\n".join(lines)


async def per_host(address: str, root: Path, fan: Fanout, runs: int) -> dict[str, float]:
    platform = await _platform(address, root, fan)
    queue = "bench-fanout"
    ours: list[float] = []
    plain: list[float] = []
    mitogen: list[float] = []
    async with platform_worker_task(platform, queue):
        await _seed(platform, queue, fan)
        last = None
        for _ in range(runs):
            seconds, last = await _reapply(platform, queue, fan, max_parallel=4)
            ours.append(seconds)
            plain.append(await asyncio.to_thread(run_ansible, fan, False))
            mitogen.append(await asyncio.to_thread(run_ansible, fan, True))
        o, p, m = statistics.median(ours), statistics.median(plain), statistics.median(mitogen)
        raw = f"ours {o:.2f} s, ideal {IDEAL_S:.0f} s, ansible {p:.2f} s, mitogen {m:.2f} s (median of {runs})"
        results = {"fanout_vs_ideal": o / IDEAL_S, "fanout_vs_ansible": p / o, "fanout_vs_mitogen": m / o}
        for key, value in results.items():
            print(row(key, value, raw))
        if last is not None and not all(met(k, v) for k, v in results.items()):
            print(await _lanes(platform, last, serial=True))
    return results


async def per_module(address: str, root: Path, runs: int) -> dict[str, float]:
    with fanout_hosts(project_per_service=True) as fan:
        platform = await _platform(address, root, fan)
        queue, floor_queue = "bench-fanout40", "bench-fanout40-floor"
        ours: list[float] = []
        floor: list[float] = []
        async with platform_worker_task(platform, queue), floor_worker(platform, floor_queue):
            kinds = (await _seed(platform, queue, fan)).kinds
            last = None
            for _ in range(runs):
                seconds, last = await _reapply(platform, queue, fan, max_parallel=len(fan.ups))
                ours.append(seconds)
                began = time.perf_counter()
                handles = await asyncio.gather(*(platform.floor(floor_queue, len(kinds)) for _ in fan.ups))
                await asyncio.gather(*(finished(h) for h in handles))
                floor.append(time.perf_counter() - began + COMPOSE_S)
            o, f = statistics.median(ours), statistics.median(floor)
            ratio = o / f
            print(row("fanout_parallel_vs_floor", ratio,
                      f"ours {o:.2f} s vs {len(fan.ups)} floors at once + {COMPOSE_S:.0f} s = {f:.2f} s "
                      f"(median of {runs})"))
            if not met("fanout_parallel_vs_floor", ratio) and last is not None:
                print(await _lanes(platform, last, serial=False))
    return {"fanout_parallel_vs_floor": ratio}
