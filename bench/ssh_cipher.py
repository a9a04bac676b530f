"""Worker CPU per pooled SSH command: the transport's cipher order (AES-GCM first)
against asyncssh's default (chacha20-poly1305 first), in interleaved rounds on one
throw-away test sshd whose `docker` exits at once (needs root and openssh-server).

    .venv/bin/python bench/ssh_cipher.py [-n 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.sshd when run as a script

from bench.ssh_pool import instant_docker  # noqa: E402
from platformctl.commands import compose_ps  # noqa: E402
from platformctl.transport import ssh  # noqa: E402
from tests.sshd import start_sshd, unavailable_reason  # noqa: E402

ROUNDS = 5


async def cpu_ms_per_command(host, command, ciphers: str, n: int) -> float:
    ssh.CIPHERS = ciphers  # read at connect
    transport = ssh.SshTransport()
    try:
        await transport.run(host, command, timeout_s=30)  # connect outside the measurement
        started = time.process_time()
        for _ in range(n):
            await transport.run(host, command, timeout_s=30)
        return (time.process_time() - started) / n * 1000
    finally:
        await transport.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100, help="commands per round and order (default 100)")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    orders = {"transport's": ssh.CIPHERS, "asyncssh default": "default"}
    sshd = start_sshd()
    try:
        instant_docker(sshd)
        host, command = sshd.host_config(), compose_ps(sshd.compose_path, "redis")
        samples: dict[str, list[float]] = {name: [] for name in orders}
        for _ in range(ROUNDS):
            for name, ciphers in orders.items():
                samples[name].append(await cpu_ms_per_command(host, command, ciphers, args.n))
    finally:
        sshd.stop()
    for name, values in samples.items():
        print(f"{name:<17} worker CPU per command: median {statistics.median(values):.2f} ms "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    ours, default = (statistics.median(samples[name]) for name in orders)
    print(f"ratio {ours / default:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
