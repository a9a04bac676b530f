"""Issue 9's targets, the table rows and the final key=value line."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

KEYS = (
    "overhead_ratio", "fanout_vs_ideal", "fanout_vs_ansible", "fanout_vs_mitogen", "fanout_parallel_vs_floor",
    "ssh_gated_ms", "ssh_pooled_ms", "ssh_fresh_ms", "rss_idle_mb", "rss_200_mb", "rss_1000_mb",
    "dry_throughput_vs_floor",
)
_LE, _GE, _GT = (operator.le, "<="), (operator.ge, ">="), (operator.gt, ">")
TARGETS: dict[str, tuple[tuple[Callable[[float, float], bool], str], float]] = {
    "overhead_ratio": (_LE, 1.3),
    "fanout_vs_ideal": (_LE, 1.15),
    "fanout_vs_ansible": (_GE, 1.4),
    "fanout_vs_mitogen": (_GT, 1.0),
    "fanout_parallel_vs_floor": (_LE, 1.3),
    "ssh_gated_ms": (_LE, 25),
    "ssh_pooled_ms": (_LE, 10),
    "rss_idle_mb": (_LE, 150),
    "rss_200_mb": (_LE, 250),
    "rss_1000_mb": (_LE, 300),
    "dry_throughput_vs_floor": (_GE, 0.85),
}


def formatted(key: str, value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.1f}" if key.endswith(("_ms", "_mb")) else f"{value:.2f}"


def met(key: str, value: float) -> bool | None:
    """None: no target (or no value)."""
    if key not in TARGETS or math.isnan(value):
        return None
    (check, _), bound = TARGETS[key]
    return check(value, bound)


def row(key: str, value: float, raw: str) -> str:
    target = ""
    if key in TARGETS:
        (_, sign), bound = TARGETS[key]
        target = f"{sign} {bound:g}"
    verdict = {True: "ok", False: "MISSED", None: ""}[met(key, value)]
    return f"| {key:26} | {formatted(key, value):>8} | {target:>7} | {verdict:6} | {raw}"


def last_line(results: dict[str, float]) -> str:
    return " ".join(f"{k}={formatted(k, results[k])}" for k in KEYS if k in results)
