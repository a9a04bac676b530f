"""The real `worker.py` process against a real Temporal dev server, gate closed.

Driven the way an operator or CI would: plain JSON input through the
temporalio client and once through the `temporal` CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType, IndexedValueType
from temporalio.client import WorkflowFailureError
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError

from tests.e2e.conftest import (
    PLATFORM_ATTRIBUTES,
    REPO,
    WorkerProcess,
    closed_port,
    connection_attempts,
    dev_server_port,
    ssh_host_entry,
    write_hosts,
    write_module,
)
from tests.platform_files import SHA, apply_input, change, plan
from tests.servers import NAMESPACE, TEMPORAL_CLI

MODULE = "e2e-dry"
SERVICE = "dry-svc"


def keyword(name: str) -> SearchAttributeKey:
    return SearchAttributeKey.for_keyword(name)


@pytest.fixture
def platform(e2e, sshd_host):
    write_hosts(e2e.root, {"h1": ssh_host_entry(sshd_host)})
    write_module(e2e.root, MODULE, "h1", SERVICE)
    return e2e


def request(**over):
    return apply_input(plan(module=MODULE, changes=[change(SERVICE)]), **over)


@pytest.mark.parametrize("phase", [None, "5"], ids=["phase-unset", "phase-5"])
async def test_gate_closed_is_a_dry_run_that_touches_no_host(platform, sshd_host, phase):
    e2e = platform
    worker = await e2e.start_worker(phase=phase)
    assert "dry run" in worker.log()
    attempts_before = connection_attempts(sshd_host)
    workflow_id = f"apply-e2e-dry-{uuid.uuid4().hex[:8]}"

    result = await e2e.client.execute_workflow(
        "ApplyWorkflow", request(), id=workflow_id, task_queue=e2e.task_queue,
        execution_timeout=timedelta(seconds=60),
    )

    assert isinstance(result, dict)
    assert result["status"] == "dry_run" and result["exitCode"] == 0
    assert result["command"] == f"docker compose -f {sshd_host.compose_path} up -d {SERVICE}"
    assert (result["module"], result["host"], result["compose_service"]) == (MODULE, "h1", SERVICE)
    assert result["remote"] is None and result["health"] is None and result["rollback"] is None
    # Nothing reached the host: no docker call, not even a TCP connection.
    assert sshd_host.calls() == []
    assert connection_attempts(sshd_host) == attempts_before
    # The outcome is audited, but no status file claims an apply.
    audit = e2e.audit()
    assert [(a["workflow_id"], a["status"], a["exitCode"]) for a in audit] == [(workflow_id, "dry_run", 0)]
    assert not e2e.status_file(MODULE).exists()


async def test_worker_registers_and_sets_search_attributes(platform, dev_server):
    e2e = platform
    assert not set(PLATFORM_ATTRIBUTES) & set(dev_server.initial_custom_attributes), (
        "the dev server must start without the platform's search attributes, or this test proves nothing"
    )
    await e2e.start_worker(phase=None)

    registered = await dev_server.custom_attributes()
    for name in PLATFORM_ATTRIBUTES:
        assert registered.get(name) == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD, (name, registered)

    handle = await e2e.start(request())
    assert (await handle.result())["status"] == "dry_run"
    attrs = (await handle.describe()).typed_search_attributes
    assert attrs.get(keyword("PlatformModule")) == MODULE
    assert attrs.get(keyword("PlatformHost")) == "h1"
    assert attrs.get(keyword("PlatformStatus")) == "dry_run"
    # An operator can find it by them.
    query = f'PlatformModule = "{MODULE}" AND PlatformStatus = "dry_run" AND WorkflowId = "{handle.id}"'
    found = []
    for _ in range(50):  # visibility is eventually consistent
        found = [w.id async for w in e2e.client.list_workflows(query)]
        if found:
            break
        await asyncio.sleep(0.1)
    assert found == [handle.id]


async def test_no_changes_plan_ends_no_changes(platform, sshd_host):
    e2e = platform
    await e2e.start_worker(phase=None)
    attempts_before = connection_attempts(sshd_host)
    result = await e2e.client.execute_workflow(
        "ApplyWorkflow", apply_input(plan(module=MODULE, changes=[])), id=f"apply-e2e-{uuid.uuid4().hex[:8]}",
        task_queue=e2e.task_queue,
    )
    assert result["status"] == "no_changes" and result["exitCode"] == 0
    assert result["command"] is None
    assert sshd_host.calls() == [] and connection_attempts(sshd_host) == attempts_before
    assert [a["status"] for a in e2e.audit()] == ["no_changes"]


@pytest.mark.parametrize(
    "bad",
    [
        "not an object",
        ["a", "list"],
        {},
        {"plan": "not an object"},
        {"plan": {"module": MODULE, "source_sha": SHA, "changes": "not a list"}},
    ],
    ids=["bare-string", "list", "no-plan", "plan-not-object", "changes-not-list"],
)
async def test_malformed_input_is_blocked_within_seconds(platform, sshd_host, bad):
    e2e = platform
    await e2e.start_worker(phase="05")  # even with the gate open
    handle = await e2e.start(bad)
    started = time.monotonic()
    with pytest.raises(WorkflowFailureError) as caught:
        await asyncio.wait_for(handle.result(), 20)
    elapsed = time.monotonic() - started
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "PolicyViolation" and cause.non_retryable
    detail = cause.details[0]
    assert detail["status"] == "blocked" and detail["exitCode"] == 3
    assert "invalid apply input" in detail["error"]
    assert elapsed < 10, f"blocked only after {elapsed:.1f} s"
    # Ended by the workflow itself, not by a workflow task failing in a loop.
    events = [e async for e in handle.fetch_history_events()]
    assert not [e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
    assert sshd_host.calls() == []


SIGTERM_CYCLES = 12


async def test_sigterm_exits_0_every_time(platform):
    """SIGTERM is a graceful stop: exit 0, promptly, every time. Several cycles,
    because the failure this guards against was intermittent: worker.py used
    to abort (exit -6, "Fatal Python error: PyGILState_Release ... runtime
    state: finalizing") in 5-25% of stops, after a clean shutdown, when
    temporalio's Rust threads touched the finalizing interpreter
    (temporalio/sdk-python#300)."""
    e2e = platform
    for cycle in range(SIGTERM_CYCLES):
        worker = await e2e.start_worker(phase=None)
        await asyncio.sleep(0.5)  # the abort was most frequent ~0.5-1 s after start
        code, seconds = await worker.terminate()
        log = worker.log()
        assert code == 0, f"cycle {cycle}: exit {code} after {seconds:.2f} s of SIGTERM:\n{log}"
        assert seconds < 5, f"cycle {cycle}: an idle worker took {seconds:.1f} s to stop"
        assert "shutting down" in log and "Traceback" not in log, log


async def _cli(*args: str, timeout_s: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(TEMPORAL_CLI), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    return proc.returncode, out.decode(errors="replace")


async def test_operator_runs_applies_with_the_temporal_cli(platform, sshd_host, dev_server):
    e2e = platform
    await e2e.start_worker(phase=None)
    common = ["--type", "ApplyWorkflow", "--task-queue", e2e.task_queue,
              "--address", dev_server.address, "--namespace", NAMESPACE]

    dirty = apply_input(plan(module=MODULE, changes=[change(SERVICE)], source_dirty=True))
    code, out = await _cli("workflow", "execute", *common, "--workflow-id", f"cli-blocked-{uuid.uuid4().hex[:8]}",
                           "--input", json.dumps(dirty))
    assert code != 0, out
    assert "FAILED" in out and "dirty tree" in out, out

    code, out = await _cli("workflow", "execute", *common, "--workflow-id", f"cli-dry-{uuid.uuid4().hex[:8]}",
                           "--input", json.dumps(request()), "--output", "json")
    assert code == 0, out
    shown = json.loads(out)
    assert shown["status"] == "COMPLETED", shown
    (result,) = shown["closeEvent"]["workflowExecutionCompletedEventAttributes"]["result"]
    assert (result["status"], result["exitCode"]) == ("dry_run", 0)
    assert result["command"] == f"docker compose -f {sshd_host.compose_path} up -d {SERVICE}"
    assert sshd_host.calls() == []


# ---- --dev: the embedded dev server ---------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting for a reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _dev_worker(env: dict[str, str], log_path: Path) -> WorkerProcess:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "worker.py", "--dev"], cwd=REPO, env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    return WorkerProcess(proc, log_path, env)


async def test_a_killed_dev_worker_takes_its_dev_server_with_it(tmp_path):
    port = dev_server_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "PLATFORM_", "PLATFORMCTL_"))}
    env.update(
        TEMPORAL_ADDRESS=f"127.0.0.1:{port}", PLATFORM_ROOT=str(tmp_path), PLATFORM_STATE_DIR=str(tmp_path / "state"),
        PYTHONUNBUFFERED="1",
    )
    worker = _dev_worker(env, tmp_path / "worker.log")
    servers: list[int] = []
    try:
        await worker.wait_polling(timeout_s=90)
        servers = _children(worker.pid)
        assert len(servers) == 1, (servers, worker.log())
        worker.kill9()
        deadline = time.monotonic() + 10
        while (_alive(servers[0]) or _listening(port)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not _alive(servers[0]), f"dev server {servers[0]} outlived its killed worker"
        assert not _listening(port)
    finally:
        worker.force_stop()
        for pid in servers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_a_dev_worker_whose_web_ui_port_is_taken_says_so_and_exits(tmp_path):
    """The server would die at its UI bind after its frontend listened: a worker
    that connected then got a bare "transport error" or polled a dead server."""
    port = dev_server_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "PLATFORM_", "PLATFORMCTL_"))}
    env.update(TEMPORAL_ADDRESS=f"127.0.0.1:{port}", PLATFORM_ROOT=str(tmp_path),
               PLATFORM_STATE_DIR=str(tmp_path / "state"), PYTHONUNBUFFERED="1")
    with socket.socket() as ui:
        ui.bind(("127.0.0.1", port + 1000))
        ui.listen()
        worker = _dev_worker(env, tmp_path / "worker.log")
        try:
            code = await asyncio.to_thread(worker.proc.wait, 30)
        finally:
            worker.force_stop()
    assert code != 0, worker.log()
    assert f"Web UI port 127.0.0.1:{port + 1000} is in use" in worker.log()
    assert not _listening(port), "a dev server was started anyway"


async def test_dev_worker_attaches_to_a_server_it_did_not_start(platform, dev_server):
    e2e = platform
    worker = _dev_worker(e2e.worker_env(None), e2e.logs_dir / "dev-worker.log")
    e2e.workers.append(worker)
    await worker.wait_polling()
    assert "attaching to it; this worker did not start it and will not stop it" in worker.log()
    assert _children(worker.pid) == []
    code, _ = await worker.terminate()
    assert code == 0, worker.log()
    assert _listening(int(dev_server.address.rpartition(":")[2]))


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---- what an operator reads and scrapes -----------------------------------------


async def test_json_logs_outcome_lines_refusals_and_metrics(platform):
    e2e = platform
    port = closed_port()
    e2e.extra_env.update(PLATFORM_LOG_FORMAT="json", PLATFORM_METRICS_ADDRESS=f"127.0.0.1:{port}")
    worker = await e2e.start_worker(phase=None)
    dry = await e2e.apply(request())
    blocked = await e2e.apply(apply_input(plan(module=MODULE, changes=[change(SERVICE)], source_dirty=True)))
    assert (dry.status, blocked.status) == ("dry_run", "blocked")
    await asyncio.sleep(0.5)  # the last activity's log line

    records = [json.loads(line) for line in worker.log().splitlines()]  # every line is one JSON object
    messages = [r["message"] for r in records]
    assert any(m.startswith(f"apply {MODULE}@h1 dry_run exit=0 in ") and f"workflow={dry.handle.id}" in m
               for m in messages), messages
    (refusal,) = [r for r in records if r["logger"] == "platform.activity"]
    assert refusal["level"] == "WARNING" and "ends the apply as blocked" in refusal["message"]
    assert not [r for r in records if "Completing activity as failed" in r["message"] or "exception" in r]

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    counted = [line for line in text.splitlines() if line.startswith("platform_apply_outcomes_total{")]
    assert any('status="dry_run"' in line and f'module="{MODULE}"' in line and line.endswith(" 1")
               for line in counted), counted
    assert any('status="blocked"' in line and line.endswith(" 1") for line in counted), counted



def _worker_once(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """worker.py run with a platform root, a state dir and a server address nothing listens on,
    plus `env`; it should exit (nothing it could poll)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "PLATFORM_", "PLATFORMCTL_"))}
    base = {"PLATFORM_ROOT": str(tmp_path), "PLATFORM_STATE_DIR": str(tmp_path / "state"),
            "TEMPORAL_ADDRESS": f"127.0.0.1:{closed_port()}"}
    return subprocess.run([sys.executable, "worker.py", *args], cwd=REPO, env={**clean, **base, **env},
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(
    "env, args, line",
    [
        ({"PLATFORM_ROOT": "{tmp}/missing"}, [], "PLATFORM_ROOT {tmp}/missing is not a directory"),
        ({"PLATFORM_STATE_DIR": "{tmp}/afile/state"}, [],
         "cannot write the state dir {tmp}/afile/state (PLATFORM_STATE_DIR): Not a directory"),
        ({"PLATFORM_APPROVAL_KEY_FILE": "{tmp}/none.key"}, [],
         "cannot read PLATFORM_APPROVAL_KEY_FILE: No such file or directory ({tmp}/none.key)"),
        ({"TEMPORAL_ADDRESS": "127.0.0.1:1"}, [], "cannot use Temporal at 127.0.0.1:1 (namespace default): "),
        ({"TEMPORAL_ADDRESS": "localhost:abc"}, ["--dev"], "TEMPORAL_ADDRESS must be host:port, not 'localhost:abc'"),
        ({"PLATFORM_HEARTBEAT_TIMEOUT_SECONDS": "30s"}, [],
         "PLATFORM_HEARTBEAT_TIMEOUT_SECONDS must be a whole number of seconds from 5 to 600, not '30s'"),
    ],
    ids=["no-root", "state-under-a-file", "no-key", "no-server", "dev-bad-address", "bad-heartbeat-timeout"],
)
def test_a_worker_that_cannot_work_says_why_in_one_line_and_exits(tmp_path, env, args, line):
    # Before: a missing root made every apply `unknown module`, an unwritable state dir lost
    # the audit lines, and the rest were Python tracebacks.
    (tmp_path / "afile").write_text("")
    proc = _worker_once(tmp_path, *args, **{k: v.format(tmp=tmp_path) for k, v in env.items()})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc
    assert proc.stderr.strip().splitlines()[-1].startswith(line.format(tmp=tmp_path)), proc.stderr


def test_a_key_file_every_user_can_read_is_warned_about(tmp_path):
    key = tmp_path / "approval.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    loose = _worker_once(tmp_path, PLATFORM_APPROVAL_KEY_FILE=str(key))
    key.chmod(0o600)
    tight = _worker_once(tmp_path, PLATFORM_APPROVAL_KEY_FILE=str(key))
    assert f"PLATFORM_APPROVAL_KEY_FILE {key} is open to every user (mode 644)" in loose.stderr, loose.stderr
    assert "open to every user" not in tight.stderr and "cannot use Temporal" in tight.stderr, tight.stderr
