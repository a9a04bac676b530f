"""Round trip of `docker compose ps` over SshTransport: pooled vs fresh connections.

Starts a throw-away test sshd (tests/sshd.py; needs root and openssh-server)
whose `docker` is the stand-in, then times N commands over one pooled
connection and N commands that each open (and close) their own connection.

    .venv/bin/python bench/ssh_pool.py [-n 50] [--gate]

`--gate` puts host/platform-gate in front of every command, as on a host.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.sshd when run as a script

from platformctl.commands import compose_ps  # noqa: E402
from platformctl.transport.ssh import SshTransport  # noqa: E402
from tests.sshd import start_sshd, unavailable_reason  # noqa: E402


async def timed(transport: SshTransport, host, command) -> float:
    started = time.perf_counter()
    out = await transport.run(host, command, timeout_s=30)
    if out.returncode != 0:
        raise RuntimeError(f"compose ps failed: {out.stderr}")
    return time.perf_counter() - started


async def pooled(host, command, n: int) -> list[float]:
    transport = SshTransport()
    try:
        await timed(transport, host, command)  # connect once, outside the measurement
        return [await timed(transport, host, command) for _ in range(n)]
    finally:
        await transport.close()


async def fresh(host, command, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        transport = SshTransport()
        started = time.perf_counter()
        await timed(transport, host, command)
        await transport.close()
        samples.append(time.perf_counter() - started)
    return samples


def summary(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[int(len(ms) * 0.9) - 1]
    return f"{name:<8} median {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms   min {ms[0]:7.1f} ms"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="round trips per mode (default 50)")
    parser.add_argument("--gate", action="store_true", help="run every command through host/platform-gate")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    sshd = start_sshd(gate=args.gate)
    try:
        host = sshd.host_config()
        command = compose_ps(sshd.compose_path, "redis")
        reused = await pooled(host, command, args.n)
        each = await fresh(host, command, args.n)
    finally:
        sshd.stop()
    print(f"{args.n} x `{command.render()}`{' through platform-gate' if args.gate else ''}")
    print(summary("pooled", reused))
    print(summary("fresh", each))
    print(f"fresh / pooled (medians): {statistics.median(each) / statistics.median(reused):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
