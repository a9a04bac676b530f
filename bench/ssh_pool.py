"""Round trip of `docker compose ps` over SshTransport: pooled vs fresh connections.

Starts two throw-away test sshd (tests/sshd.py; needs root and openssh-server),
one with host/platform-gate as the forced command as on a host, one without,
and on each times N commands over one pooled connection and N commands that
each open (and close) their own connection, in interleaved rounds so drift
hits every mode alike. Each host's `docker` exits at once (instant_docker):
the figures are the transport and the gate, not the stand-in docker, which
is Python and would cost more than both.

    .venv/bin/python bench/ssh_pool.py [-n 50]
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
from tests.sshd import SshHost, start_sshd, unavailable_reason  # noqa: E402

ROUNDS = 5  # each mode's N samples are taken in this many interleaved rounds


def instant_docker(sshd: SshHost) -> None:
    """Make the host's `docker` a program that exits 0 at once (/bin/true)."""
    docker = Path(sshd.bin_dir, "docker")
    docker.unlink()
    docker.symlink_to("/bin/true")


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
    return f"{name:<14} median {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms   min {ms[0]:7.1f} ms"


async def measure(n: int) -> dict[str, list[float]]:
    """Samples (seconds) of `n` round trips per mode: "gated pooled", "gated
    fresh", "plain pooled", "plain fresh". Starts and stops its own two hosts."""
    gated, plain = start_sshd(gate=True), None
    try:
        plain = start_sshd()
        modes = {}
        for name, sshd in (("gated", gated), ("plain", plain)):
            instant_docker(sshd)
            command = compose_ps(sshd.compose_path, "redis")
            modes[f"{name} pooled"] = (pooled, sshd.host_config(), command)
            modes[f"{name} fresh"] = (fresh, sshd.host_config(), command)
        samples: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(ROUNDS):
            for name, (mode, host, command) in modes.items():
                samples[name] += await mode(host, command, max(1, n // ROUNDS))
        return samples
    finally:
        gated.stop()
        if plain:
            plain.stop()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="round trips per mode (default 50)")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    samples = await measure(args.n)
    print(f"{len(samples['gated pooled'])} x `docker compose ... ps --format json redis` per mode, docker = /bin/true")
    for name, values in samples.items():
        print(summary(name, values))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
