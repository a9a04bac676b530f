"""`platform-apply logs APPLY_ID` against the session's dev server, with a fake SSH
transport: the apply's run id and host come from Temporal and the platform files,
the host's text reaches the terminal only redacted and plain, nothing is stored."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from platformctl.cli import logs
from platformctl.commands import RemoteCommand
from platformctl.models import HostConfig
from platformctl.transport.base import ConnectFailed, RemoteOutput
from tests.cli.conftest import in_process_env, run_in_process
from tests.platform_files import apply_input, host_doc, module_doc, plan, write_platform

HOST = "rs2000"
MODULE = "honcho-redis"


def answer(returncode: int | None, stdout: str = "", stderr: str = "") -> RemoteOutput:
    return RemoteOutput(returncode=returncode, stdout=stdout, stderr=stderr, duration_s=0.01)


@dataclass
class FakeSsh:
    """Stands in for SshTransport: answers `response`, records each (host, command)."""

    response: RemoteOutput | Exception
    calls: list[tuple[HostConfig, RemoteCommand]] = field(default_factory=list)
    closed: bool = False

    async def run(self, host: HostConfig, command: RemoteCommand, *, timeout_s: float) -> RemoteOutput:
        assert not self.closed
        self.calls.append((host, command))
        if isinstance(self.response, Exception):
            raise self.response
        return self.response

    async def close(self) -> None:
        self.closed = True


@dataclass
class LogsEnv:
    client: Any
    root: Path
    task_queue: str
    ssh: FakeSsh
    monkeypatch: pytest.MonkeyPatch
    handles: list[WorkflowHandle[Any, Any]] = field(default_factory=list)

    def answers(self, response: RemoteOutput | Exception) -> None:
        self.ssh.response = response

    async def start(
        self, request: Any = None, workflow_type: str = "ApplyWorkflow", task_queue: str | None = None
    ) -> WorkflowHandle[Any, Any]:
        # Nothing polls these queues: the workflow only needs to exist, with its start input.
        handle = await self.client.start_workflow(
            workflow_type, request if request is not None else apply_input(plan()),
            id=f"apply-{MODULE}-{uuid.uuid4().hex[:12]}", task_queue=task_queue or self.task_queue,
        )  # fmt: skip
        self.handles.append(handle)
        return handle

    async def logs(self, *args: str) -> int:
        # main() runs its own event loop, as the console script does: on a thread of its own.
        return await asyncio.to_thread(run_in_process, "logs", *args)


@pytest.fixture
async def env(dev_server, tmp_path, monkeypatch):
    root = tmp_path / "platform"
    root.mkdir()
    write_platform(root, modules=[module_doc(MODULE, host=HOST)], hosts={HOST: host_doc(root)})
    queue = f"tq-{uuid.uuid4()}"
    in_process_env(
        monkeypatch,
        {"TEMPORAL_ADDRESS": dev_server.address, "PLATFORM_ROOT": str(root), "PLATFORM_TASK_QUEUE": queue},
    )
    ssh = FakeSsh(answer(0))

    def transport() -> FakeSsh:
        ssh.closed = False
        return ssh

    monkeypatch.setattr(logs, "SshTransport", transport)
    state = LogsEnv(dev_server.client, root, queue, ssh, monkeypatch)
    yield state
    for handle in state.handles:
        try:
            await handle.terminate()
        except Exception:
            pass


async def test_prints_the_kept_output_redacted_and_plain_fetched_with_the_given_key(env, capsys, tmp_path):
    handle = await env.start()
    run_id = handle.result_run_id
    env.answers(
        answer(0, "Container core-honcho-redis-1  Started\n\x1b]0;x\x07\x1b[31mred\x1b[0m\tcolumn\npassword=hunter2")
    )
    key = tmp_path / "read_only_key"

    code = await env.logs(handle.id, "--key", str(key))

    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), (code, out, err)
    assert out == "Container core-honcho-redis-1  Started\nred\tcolumn\npassword=[REDACTED]\n"
    assert "hunter2" not in out and "\x1b" not in out and "\x07" not in out
    ((host, command),) = env.ssh.calls
    assert command.argv == ("platform-agent", "logs", run_id) and command.kind == "agent_logs"
    assert command.render() == f"platform-agent logs {run_id}"
    assert (host.name, host.address, host.client_key) == (HOST, "rs2000.example.ts.net", str(key))
    assert env.ssh.closed
    assert not (env.root / ".platform").exists()  # no state file, no audit line


async def test_the_key_is_platform_logs_key_else_the_hosts_client_key(env, capsys, tmp_path):
    handle = await env.start()
    env.monkeypatch.setenv("PLATFORM_LOGS_KEY", str(tmp_path / "from_env"))
    assert await env.logs(handle.id) == 0
    env.monkeypatch.delenv("PLATFORM_LOGS_KEY")
    assert await env.logs(handle.id) == 0
    assert [host.client_key for host, _ in env.ssh.calls] == [
        str(tmp_path / "from_env"), str(env.root / "keys" / "platform_deploy"),
    ]  # fmt: skip


async def test_no_output_kept_for_the_run_exits_66(env, capsys):
    handle = await env.start()
    env.answers(answer(66, stderr="nothing kept"))

    code = await env.logs(handle.id)

    out, err = capsys.readouterr()
    assert (code, out) == (66, ""), (code, out, err)
    assert err == (
        f"platform-apply: host {HOST} kept no output for run {handle.result_run_id} of {handle.id} (it ran "
        "before the agent kept output, or was removed to stay within the host's bound)\n"
    )


async def test_an_agent_that_refuses_logs_exits_3(env, capsys):
    handle = await env.start()
    env.answers(answer(126))

    code = await env.logs(handle.id)

    out, err = capsys.readouterr()
    assert (code, out) == (3, ""), (code, out, err)
    assert err == (
        f"platform-apply: blocked: the host agent on {HOST} refused logs (agent older than v2, "
        "or a key that may not run it)\n"
    )


async def test_any_other_answer_or_no_connection_exits_4_on_one_redacted_line(env, capsys):
    handle = await env.start()
    env.answers(answer(1, stderr="boom\npassword=hunter2\x1b[2J"))
    assert await env.logs(handle.id) == 4
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "hunter2" not in err and "\x1b" not in err, err
    assert err.startswith(f"platform-apply: the host agent on {HOST} answered logs with exit 1: boom"), err

    env.answers(answer(None, stdout="password=hunter2"))  # killed at its timeout
    assert await env.logs(handle.id) == 4
    out, err = capsys.readouterr()
    assert out == "" and "did not answer logs within 30 s" in err, err

    env.answers(ConnectFailed(f"{HOST}: cannot connect to rs2000.example.ts.net:22: refused"))
    assert await env.logs(handle.id) == 4
    out, err = capsys.readouterr()
    assert out == "" and err == (
        f"platform-apply: cannot fetch logs from {HOST}: {HOST}: cannot connect to rs2000.example.ts.net:22: refused\n"
    )
    assert env.ssh.closed


async def test_an_id_that_names_no_workflow_exits_66_and_contacts_no_host(env, capsys):
    code = await env.logs(f"apply-{uuid.uuid4().hex}")

    out, err = capsys.readouterr()
    assert (code, out) == (66, ""), (code, out, err)
    assert err.startswith("platform-apply: no workflow apply-"), err
    assert env.ssh.calls == []


async def test_a_workflow_of_another_type_or_queue_exits_3_and_contacts_no_host(env, capsys):
    for kind, queue in (("SomethingElse", None), ("ApplyWorkflow", f"not-ours-{uuid.uuid4().hex[:8]}")):
        handle = await env.start(workflow_type=kind, task_queue=queue)
        code = await env.logs(handle.id)
        out, err = capsys.readouterr()
        assert (code, out) == (3, ""), (kind, code, out, err)
        assert f"is {kind} on task queue {queue or env.task_queue}, not an ApplyWorkflow" in err, err
    assert env.ssh.calls == []


async def test_an_apply_whose_module_or_host_is_gone_exits_3_and_contacts_no_host(env, capsys):
    gone = await env.start(apply_input(plan(module="gone-module")))
    assert await env.logs(gone.id) == 3
    out, err = capsys.readouterr()
    assert out == "" and "unknown module 'gone-module'" in err and "blocked" in err, err

    write_platform(env.root, modules=[module_doc("moved", host="decommissioned")], hosts={HOST: host_doc(env.root)})
    moved = await env.start(apply_input(plan(module="moved")))
    assert await env.logs(moved.id) == 3
    out, err = capsys.readouterr()
    assert out == "" and "host 'decommissioned' of module moved is no longer in hosts.yaml" in err, err
    assert env.ssh.calls == []
