"""A Temporal dev server that a test can kill -9 and start again on the same SQLite file.

It is started exactly as `worker.py --dev` starts it (`worker.start_dev_server`:
the same flags, tuning and SQLite pragmas, the file `<state>/temporal-dev.sqlite`),
on a free port of its own. `kill9()` then `start()` brings it back on the same
file and port, as an operator's restart would.

`start()` blocks while the server comes up (~1-3 s) and must run on the main
thread: the server is told to die with the thread that started it.

    from tests.chaos.dev_server import sqlite_dev_server  # noqa: F401  (the fixture)
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from temporalio.client import Client

import worker as platform_worker
from platformctl.client import DATA_CONVERTER
from platformctl.config import Settings
from tests.e2e.conftest import dev_server_port

NAMESPACE = "default"


class RestartableDevServer:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.address = f"localhost:{dev_server_port()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._client: Client | None = None

    @property
    def db(self) -> Path:
        return self.state_dir / "temporal-dev.sqlite"

    @property
    def client(self) -> Client:
        assert self._client is not None, "start() first"
        return self._client

    def _settings(self) -> Settings:
        return Settings(
            temporal_address=self.address, namespace=NAMESPACE, task_queue="unused", platform_root=self.state_dir,
            state_dir=self.state_dir, phase="",
        )

    async def start(self) -> None:
        """Start (or start again) on the same file and port; connect the client the first time.
        The same client stays usable across restarts: it reconnects by itself."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        proc = platform_worker.start_dev_server(self._settings())
        assert proc is not None, f"something else listens at {self.address}"
        self.proc = proc
        self.starts += 1
        if self._client is None:
            self._client = await Client.connect(
                self.address, namespace=NAMESPACE, data_converter=DATA_CONVERTER
            )

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # its data is the test's temp dir: nothing to flush
            self.proc.wait(timeout=10)


@pytest.fixture
async def sqlite_dev_server(tmp_path):
    """A started RestartableDevServer on a SQLite file under tmp_path; killed after the test."""
    server = RestartableDevServer(tmp_path / "temporal")
    try:
        await server.start()
        yield server
    finally:
        server.stop()
