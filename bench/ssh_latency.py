"""4. SSH round trips (bench/ssh_pool.py, its own two hosts whose `docker` exits at
once): pooled through the gate, pooled without it, a fresh gated connection each time."""

from __future__ import annotations

import statistics

from bench import ssh_pool
from bench.report import row

KEYS = {"ssh_gated_ms": "gated pooled", "ssh_pooled_ms": "plain pooled", "ssh_fresh_ms": "gated fresh"}


async def measure(n: int) -> dict[str, float]:
    samples = await ssh_pool.measure(n)
    medians = {key: statistics.median(samples[mode]) * 1000 for key, mode in KEYS.items()}
    for key, value in medians.items():
        print(row(key, value, f"median of {len(samples[KEYS[key]])} `docker compose ... ps` ({KEYS[key]})"))
    return medians
