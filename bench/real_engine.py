"""--real-engine: one apply against a real dockerd (tests/docker_engine.py) behind a
gated test sshd, split into compose up, the health wait and our overhead."""

from __future__ import annotations

import time
from pathlib import Path

from bench.history import activity_spans, events, profile
from bench.overhead import finished
from bench.stack import INSTANT_HEALTH, Platform, platform_worker_task
from tests.docker_engine import APP_V1, start_engine
from tests.e2e.conftest import ENGINE_HOST, ssh_host_entry, write_engine_module
from tests.platform_files import apply_input, change, plan
from tests.sshd import start_sshd

MODULE = "rt"
SERVICE = "app"


async def measure(address: str, root: Path) -> None:
    engine = start_engine()
    try:
        host = start_sshd("127.0.0.5", gate=True, engine=engine)
        try:
            platform = Platform(address, root, {"hosts": {ENGINE_HOST: ssh_host_entry(host)}})
            await platform.connect()
            write_engine_module(platform.root, host, MODULE, APP_V1, service=SERVICE, health=INSTANT_HEALTH)
            queue = "bench-engine"
            async with platform_worker_task(platform, queue):
                began = time.perf_counter()
                handle = await platform.start(queue, apply_input(plan(module=MODULE, changes=[change(SERVICE)])))
                await finished(handle, "applied")
                total = time.perf_counter() - began
                history = await events(handle)
        finally:
            host.stop()
    finally:
        engine.stop()
    spans = activity_spans(history)
    up = sum(b - a for a, b in spans["compose_up"])
    ps = spans["compose_ps"]
    health = ps[-1][1] - ps[0][0]
    print(f"real engine: one apply {total:.2f} s = compose up {up:.2f} s (its activity) "
          f"+ health wait {health:.2f} s ({len(ps)} polls until healthy) + our overhead {total - up - health:.2f} s")
    print("  profile:\n" + profile(history))
