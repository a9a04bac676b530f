"""Where the CPU went during a measurement: this process (the worker, and the
bench's client), the Temporal dev server, and the rest of the machine (the
test hosts' sshd, gate and stand-ins, which a real platform runs elsewhere).

Read from /proc: utime + stime of a process, and the machine's busy time."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _process_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15 of proc(5))


def _machine_busy_s() -> float:
    cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(cpu[:8]) - cpu[3] - cpu[4]) / TICK  # all but idle and iowait


def server_pid(address: str) -> int:
    """The `temporal server start-dev` listening on `address`'s port."""
    port = address.rpartition(":")[2].encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"start-dev" in argv and b"--port" in argv and argv[argv.index(b"--port") + 1] == port:
                return int(entry.name)
    raise LookupError(f"no dev server at {address}")


@dataclass
class Cpu:
    """Started by `Cpu.start`, read by `split()`: seconds since then."""

    server: int
    began: tuple[float, float, float, float]

    @classmethod
    def start(cls, server: int) -> Cpu:
        return cls(server, cls._now(server))

    @staticmethod
    def _now(server: int) -> tuple[float, float, float, float]:
        return time.perf_counter(), _process_s(os.getpid()), _process_s(server), _machine_busy_s()

    def split(self) -> str:
        wall, this, server, busy = (b - a for a, b in zip(self.began, self._now(self.server), strict=True))
        rest = busy - this - server
        return (
            f"CPU over {wall:.1f} s on {os.cpu_count()} cores: worker process {this:.1f} s "
            f"({this / wall:.0%} of one core), Temporal server {server:.1f} s, "
            f"the rest (test hosts' sshd, gate, stand-ins) {rest:.1f} s; "
            f"machine busy {busy / wall / (os.cpu_count() or 1):.0%}"
        )
