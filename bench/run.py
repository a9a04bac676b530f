"""Issue 9's benchmark figures, each against a baseline measured in the same run.

Starts the Temporal dev server as `worker.py --dev` does (bench/stack.py) and
the four gated test sshd hosts on 127.0.0.1-4 of bench/fanout_hosts.py
(tests/sshd.py, host/platform-gate as the forced command; needs root), and
measures, with the real worker code (worker.run_worker in this process, or
`worker.py` for memory):

    overhead        overhead_ratio: an apply vs the SDK floor of its activities
    fanout          fanout_vs_ideal/_ansible/_mitogen, fanout_parallel_vs_floor
    ssh             ssh_gated_ms, ssh_pooled_ms, ssh_fresh_ms
    rss             rss_idle_mb, rss_200_mb, rss_1000_mb (worker.py's VmRSS)
    dry             dry_throughput_vs_floor: 200 dry runs vs 200 floors at once

    .venv/bin/python bench/run.py [--quick] [--only overhead,fanout,...] [--real-engine]

It prints a table along the way (with a history profile under each missed
target) and, last, one line of key=value pairs: all twelve, or with --only
those it measured.
`--real-engine` adds one apply against a real dockerd (tests/docker_engine.py),
split into compose time and our overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import ansible_fanout, dry, fanout, overhead, real_engine, rss, ssh_latency  # noqa: E402
from bench.fanout_hosts import fanout_hosts  # noqa: E402
from bench.report import last_line  # noqa: E402
from bench.stack import Platform, dev_server, quiet_logs  # noqa: E402
from tests.sshd import unavailable_reason  # noqa: E402

METRICS = ("overhead", "fanout", "ssh", "rss", "dry")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions: under 5 minutes")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(METRICS)}")
    parser.add_argument("--real-engine", action="store_true", help="also one apply against a real Docker engine")
    args = parser.parse_args()
    only = args.only.split(",") if args.only else list(METRICS)
    if unknown := set(only) - set(METRICS):
        parser.error(f"unknown metric(s): {', '.join(sorted(unknown))}")
    if reason := unavailable_reason():
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    if "fanout" in only and (absent := ansible_fanout.missing()):
        print(f"cannot run: fanout needs the bench extra, and {absent} is not installed: "
              "uv pip install --python .venv/bin/python -e '.[bench]' (or --only without fanout)", file=sys.stderr)
        return 2
    quiet_logs()
    # Fresh bytecode first: where no .pyc may be written (PYTHONDONTWRITEBYTECODE), a stale
    # one makes the sandboxed floor compile its module again for every workflow it runs.
    for tree in ("bench", "workflows", "activities", "platformctl"):
        compileall.compile_dir(REPO / tree, quiet=1)
    began = time.monotonic()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as name, dev_server(Path(name, "server")) as address, \
            fanout_hosts() as fan:
        tmp = Path(name)
        platform = Platform(address, tmp / "platform", fan.hosts_yaml())
        await platform.connect()
        print(f"dev server {address} (as `worker.py --dev` starts it); "
              f"gated hosts {', '.join(h.sshd.address for h in fan.hosts)}; quick={args.quick}")
        print("| metric                     |    value |  target | verdict| raw")
        if "overhead" in only:
            results |= await overhead.measure(platform, 20 if args.quick else 100)
        if "fanout" in only:
            runs = 1 if args.quick else 3
            results |= await fanout.per_host(address, tmp / "fanout", fan, runs)
            results |= await fanout.per_module(address, tmp / "fanout40", runs)
        if "ssh" in only:
            results |= await ssh_latency.measure(40 if args.quick else 200)
        if "dry" in only:
            results |= await dry.measure(platform, 200, 1 if args.quick else 3)
        if args.real_engine:
            await real_engine.measure(address, tmp / "engine")
        if "rss" in only:  # last: its 1000 waiting applies stay on the server
            results |= await rss.measure(platform, tmp)
    print(f"took {time.monotonic() - began:.0f} s")
    print(last_line(results))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
