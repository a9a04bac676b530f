"""Fixtures for the `platform-apply` tests: the e2e dev server and worker, a platform
root whose host is the real test sshd, and the CLI run as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from platformctl.cli.main import main

# The real Temporal dev server and worker of the end-to-end suite.
from tests.e2e.conftest import E2E, VENV_BIN, e2e, ssh_host_entry, write_hosts  # noqa: F401

PLATFORM_APPLY = VENV_BIN / "platform-apply"
CLI_TIMEOUT_S = 120


def run_in_process(*args: str) -> int:
    """main(argv) in this process, as the console script runs it (capsys holds its output):
    usage checks answer without the second a subprocess spends importing."""
    try:
        return main(list(args))
    except SystemExit as e:  # argparse's own exits (usage errors, --help)
        return e.code if isinstance(e.code, int) else 1


def in_process_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """This process's environment as a subprocess given `env` would see it, for run_in_process."""
    for name in os.environ:
        if name.startswith(("TEMPORAL_", "PLATFORM_", "PLATFORMCTL_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@dataclass
class Ran:
    code: int
    out: str
    err: str


class Cli:
    """`platform-apply` as CI runs it: a subprocess with the worker's environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    async def start(self, *args: str, **env: str) -> Running:
        proc = await asyncio.create_subprocess_exec(
            str(PLATFORM_APPLY),
            *args,
            env={**self.env, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return Running(proc)

    async def run(self, *args: str, **env: str) -> Ran:
        return await (await self.start(*args, **env)).finish()


class Running:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.err_lines: list[str] = []

    async def wait_stderr(self, text: str, timeout_s: float = 30) -> None:
        """Read stderr until a line holds `text`."""
        assert self.proc.stderr is not None

        async def read() -> None:
            while True:
                line = (await self.proc.stderr.readline()).decode()
                if not line:
                    raise AssertionError(f"stderr ended without {text!r}: {''.join(self.err_lines)}")
                self.err_lines.append(line)
                if text in line:
                    return

        await asyncio.wait_for(read(), timeout_s)

    async def finish(self, timeout_s: float = CLI_TIMEOUT_S) -> Ran:
        try:
            out, err = await asyncio.wait_for(self.proc.communicate(), timeout_s)
        except TimeoutError:
            self.proc.kill()
            out, err = await self.proc.communicate()
            raise AssertionError(f"platform-apply still running after {timeout_s} s: {out!r} {err!r}") from None
        assert self.proc.returncode is not None
        return Ran(self.proc.returncode, out.decode(), "".join(self.err_lines) + err.decode())


@pytest.fixture
def cli(e2e: E2E) -> Cli:  # noqa: F811
    env = e2e.worker_env(phase=None)
    env.pop("PLATFORMCTL_PHASE", None)
    return Cli(env)


@pytest.fixture
def host_name() -> str:
    """A host name of this test's own: lock ids (per host and project) never meet another test's."""
    return f"h{uuid.uuid4().hex[:6]}"


@pytest.fixture
def platform(e2e: E2E, sshd_host, host_name) -> E2E:  # noqa: F811
    write_hosts(e2e.root, {host_name: ssh_host_entry(sshd_host)})
    return e2e


def new_module() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value))
    return path
