"""`platform-apply rollback`: usage errors, the signed request, and a rollback through
the real worker, dev server and test sshd (the stand-in docker's `image=` knob says
which image IDs `compose images` reports, call by call)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from platformctl.cli.rollback import request_expiry
from platformctl.models import Approval
from platformctl.policy.approval import check_signature
from tests.cli.conftest import PLATFORM_APPLY, in_process_env, new_module, run_in_process, write_json
from tests.cli.test_apply import approve_flags
from tests.e2e.conftest import closed_port, compose_up_argv, write_module
from tests.platform_files import OTHER_SHA, SHA, change, plan

KEY = b"a-test-rollback-key-of-32-bytes!"
EXPIRES = "2030-01-01T00:00:00Z"


def image(digit: str) -> str:
    return "sha256:" + digit * 64


# What `compose images` reports, call by call: the first apply's snapshot before and
# images after, the second apply's (at OTHER_SHA), then what the rollbacks see.
BEFORE, FIRST, SECOND = image("0"), image("a"), image("b")


def rollback_argv(sshd_host: Any, service: str) -> list[str]:
    return [
        "docker", "compose", "-f", sshd_host.compose_path, "-f", "-", "up", "-d", "--no-deps", "--no-build",
        "--pull", "never", service,
    ]


def run(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PLATFORM_APPLY), *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_a_signed_request_expires_in_an_hour_unless_told_otherwise():
    now = datetime(2026, 11, 28, 12, 0, 30, tzinfo=UTC)
    assert request_expiry(None, KEY, now) == "2026-11-28T13:00:30Z"
    assert request_expiry(EXPIRES, KEY, now) == EXPIRES
    assert request_expiry(None, None, now) is None  # unsigned: nothing to replay


@pytest.fixture
def unreachable_env(tmp_path, monkeypatch) -> dict[str, str]:
    # Nothing listens there: a command that got past its usage check would exit 2, not 64.
    key_file = tmp_path / "approval.key"
    key_file.write_bytes(KEY)
    env = {
        "PATH": "/usr/bin:/bin", "TEMPORAL_ADDRESS": f"127.0.0.1:{closed_port()}", "PLATFORM_ROOT": str(tmp_path),
        "PLATFORM_APPROVAL_KEY_FILE": str(key_file),
    }
    in_process_env(monkeypatch, env)
    return env


def test_usage_errors_exit_64_without_contacting_the_server(unreachable_env, capsys):
    ok = ["--by", "alice", "--reason", "bad release"]
    cases = [
        ["rollback"],
        ["rollback", "m1"],
        ["rollback", "m1", "--reason", "bad release"],  # no --by
        ["rollback", "m1", "--by", "alice"],  # no --reason
        ["rollback", "m1", "--by", "alice", "--reason", ""],
        ["rollback", "m1", "--by", "alice", "--reason", "  "],
        ["rollback", "m1", "--by", "", "--reason", "bad release"],
        ["rollback", "Not_A_Module", *ok],
        ["rollback", "-m1", *ok],
        ["rollback", "m" * 64, *ok],
        ["rollback", "m1", "m2", *ok],
        ["rollback", "m1", *ok, "--to-sha", "0123456"],  # a full SHA, as recorded
        ["rollback", "m1", *ok, "--to-sha", SHA.upper()],
        ["rollback", "m1", *ok, "--expires-at", "tomorrow"],
        ["rollback", "m1", *ok, "--expires-at", "2026-11-28T12:00:00"],  # no time zone
        ["rollback", "m1", *ok, "--no-such-flag"],
    ]
    for args in cases:
        code = run_in_process(*args)
        out, err = capsys.readouterr()
        assert code == 64, (args, code, out, err)
        assert out == "" and err.strip(), args
        assert "Traceback" not in err and "cannot reach Temporal" not in err, (args, err)


def test_an_unreachable_server_exits_2_with_one_line(unreachable_env):
    address = unreachable_env["TEMPORAL_ADDRESS"]
    for args in (
        ["rollback", "m1", "--by", "alice", "--reason", "bad release"],  # with the key: reads the state first
        ["rollback", "m1", "--by", "alice", "--reason", "bad release", "--to-sha", SHA, "--no-wait"],
    ):
        started = time.monotonic()
        done = run(*args, env=unreachable_env)
        assert (done.returncode, done.stdout) == (2, ""), (args, done.returncode, done.stdout, done.stderr)
        assert time.monotonic() - started < 15, args
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and "cannot reach Temporal" in lines[0] and address in lines[0], (args, done.stderr)


async def two_applies(sshd_host, cli, tmp_path, module: str, **env: str) -> None:
    """The module applied at SHA (images FIRST), then at OTHER_SHA (images SECOND)."""
    for sha in (SHA, OTHER_SHA):
        sshd_host.set_head_sha(sha)
        the_plan = plan(module=module, sha=sha, changes=[change(module)])
        plan_file = write_json(tmp_path / f"plan-{sha[:7]}.json", the_plan)
        ran = await cli.run("apply", str(plan_file), *approve_flags(sha), **env)
        assert ran.code == 9, ran
    assert sshd_host.calls().count(compose_up_argv(sshd_host, module)) == 2


async def rollbacks_of(platform, module: str) -> list[str]:
    query = f"WorkflowType = 'RollbackWorkflow' AND TaskQueue = '{platform.task_queue}'"
    return [wf.id async for wf in platform.client.list_workflows(query) if wf.id.startswith(f"rollback-{module}-")]


async def start_input(platform, workflow_id: str) -> dict[str, Any]:
    history = await platform.client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.workflow_type.name == "RollbackWorkflow"
    [payload] = started.input.payloads
    value = json.loads(payload.data)
    assert isinstance(value, dict), value
    return value


async def test_rollback_to_the_previous_apply_exits_9_then_no_changes_and_status_still_works(
    platform, sshd_host, host_name, cli, tmp_path
):
    module = new_module()
    write_module(platform.root, module, host_name)
    # compose images: before apply 1, after it, after apply 2, after the rollback.
    sshd_host.set_behaviour(module, f"succeed image={BEFORE},{FIRST},{SECOND},{FIRST}")
    await platform.start_worker(phase="05")
    await two_applies(sshd_host, cli, tmp_path, module)

    ran = await cli.run("rollback", module, "--by", "alice", "--reason", "bad release")

    assert ran.code == 9, ran
    assert ran.out == f"rolled_back {module}@{host_name} to 0123456 (image {FIRST[:19]}…) exit 9\n", ran
    assert sshd_host.calls().count(rollback_argv(sshd_host, module)) == 1
    [wid] = await rollbacks_of(platform, module)
    assert len(wid) == len(f"rollback-{module}-") + 12, wid
    described = await platform.client.get_workflow_handle(wid).describe()
    assert await described.static_summary() == f"rollback {module}@{host_name} to previous by alice"
    assert await described.static_details() == "bad release"
    assert await start_input(platform, wid) == {
        "module": module, "to_sha": None, "approved_by": "alice", "reason": "bad release", "expires_at": None,
        "signature": None,
    }

    status = await cli.run("status", module)
    assert status.code == 0, status
    assert status.out.startswith(f"{module}: {OTHER_SHA[:12]} PR #165 applied "), status.out

    # The host runs FIRST now: a second rollback changes nothing, and --json prints the result.
    again = await cli.run("rollback", module, "--by", "alice", "--reason", "bad release", "--to-sha", SHA, "--json")
    assert again.code == 0, again
    result = json.loads(again.out)
    shown = ("status", "exitCode", "module", "host", "compose_service", "to_sha", "image_id")
    assert {k: result[k] for k in shown} == {
        "status": "no_changes", "exitCode": 0, "module": module, "host": host_name, "compose_service": module,
        "to_sha": SHA, "image_id": FIRST,
    }
    assert set(result) >= {"snapshot", "remote", "health", "error"}, result
    assert sshd_host.calls().count(rollback_argv(sshd_host, module)) == 1


async def test_with_a_key_and_no_earlier_apply_exits_3_and_starts_nothing(
    platform, sshd_host, host_name, cli, tmp_path
):
    key_file = tmp_path / "approval.key"
    key_file.write_bytes(KEY)
    platform.extra_env["PLATFORM_APPROVAL_KEY_FILE"] = str(key_file)
    never, once = new_module(), new_module()
    for module in (never, once):
        write_module(platform.root, module, host_name)
    await platform.start_worker(phase="05")
    cli.env["PLATFORM_APPROVAL_KEY_FILE"] = str(key_file)
    plan_file = write_json(tmp_path / "plan.json", plan(module=once, changes=[change(once)]))
    assert (await cli.run("apply", str(plan_file), *approve_flags())).code == 9

    for module in (never, once):  # no module state at all; a state with one apply only
        ran = await cli.run("rollback", module, "--by", "alice", "--reason", "bad release")
        assert (ran.code, ran.out) == (3, ""), ran  # blocked, as RollbackWorkflow ends it unsigned
        lines = ran.err.splitlines()
        assert len(lines) == 1 and "nothing to roll back to" in lines[0] and module in lines[0], ran.err

    # One rollback that does start (it ends blocked: nothing earlier recorded), seen in
    # visibility: then the two above would be seen too, had they started anything.
    started = await cli.run("rollback", once, "--by", "alice", "--reason", "bad release", "--to-sha", SHA, "--no-wait")
    assert started.code == 0, started
    deadline = time.monotonic() + 30
    while started.out.strip() not in await rollbacks_of(platform, once):
        assert time.monotonic() < deadline, "the started rollback never showed in visibility"
        await asyncio.sleep(0.5)
    assert await rollbacks_of(platform, once) == [started.out.strip()]
    assert await rollbacks_of(platform, never) == []
    outcome = await platform.outcome(platform.client.get_workflow_handle(started.out.strip()))
    assert outcome.status == "blocked", outcome.data
    assert sshd_host.calls().count(rollback_argv(sshd_host, once)) == 0


async def test_a_signed_rollback_reads_the_sha_from_the_module_state_and_the_worker_accepts_it(
    platform, sshd_host, host_name, cli, tmp_path
):
    key_file = tmp_path / "approval.key"
    key_file.write_bytes(KEY)
    platform.extra_env["PLATFORM_APPROVAL_KEY_FILE"] = str(key_file)
    module = new_module()
    write_module(platform.root, module, host_name)
    sshd_host.set_behaviour(module, f"succeed image={BEFORE},{FIRST},{SECOND}")
    await platform.start_worker(phase="05")
    cli.env.pop("PLATFORM_APPROVAL_KEY_FILE", None)
    signed = {"PLATFORM_APPROVAL_KEY_FILE": str(key_file)}
    await two_applies(sshd_host, cli, tmp_path, module, **signed)

    # Without the key the request is unsigned: the worker refuses it and changes nothing.
    unsigned = await cli.run("rollback", module, "--by", "alice", "--reason", "bad release", "--to-sha", SHA)
    assert unsigned.code == 5, unsigned
    assert unsigned.out.startswith(f"approval_mismatch {module}@{host_name} to 0123456 "), unsigned
    assert " exit 5: " in unsigned.out and "not signed" in unsigned.out, unsigned
    assert sshd_host.calls().count(rollback_argv(sshd_host, module)) == 0

    ran = await cli.run("rollback", module, "--by", "alice", "--reason", "bad release", **signed)

    assert ran.code == 9, ran
    assert f"signing a rollback of {module} to {SHA}, the module state's apply before the last one" in ran.err
    assert ran.out == f"rolled_back {module}@{host_name} to 0123456 (image {FIRST[:19]}…) exit 9\n", ran
    assert sshd_host.calls().count(rollback_argv(sshd_host, module)) == 1
    wids = await rollbacks_of(platform, module)
    [wid] = [w for w in wids if (await start_input(platform, w))["signature"] is not None]
    request = await start_input(platform, wid)
    expires = request.pop("expires_at")
    assert {k: v for k, v in request.items() if k != "signature"} == {
        "module": module, "to_sha": SHA, "approved_by": "alice", "reason": "bad release",
    }
    # Signed for an hour by default: the signature stays readable in the history.
    left = datetime.fromisoformat(expires) - datetime.now(UTC)
    assert timedelta(minutes=55) < left <= timedelta(hours=1), expires
    approval = Approval(
        approved_sha=SHA, approved_pr=None, approved_by="alice", expires_at=expires, signature=request["signature"]
    )
    check_signature(KEY, module, approval, datetime.now(UTC))  # raises when it does not match
    described = await platform.client.get_workflow_handle(wid).describe()
    assert await described.static_summary() == f"rollback {module}@{host_name} to 0123456 by alice"

