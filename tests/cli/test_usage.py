"""Usage errors exit 64 before anything is contacted; an unreachable server exits 2."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time

import pytest
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError

from platformctl.cli import approve
from platformctl.cli.apply import summary_line
from platformctl.cli.common import CliError
from platformctl.cli.locks import lock_line
from platformctl.cli.main import build_parser
from platformctl.cli.progress import Progress
from platformctl.cli.status import state_line
from platformctl.models import AppliedRecord, ModuleState
from tests.cli.conftest import PLATFORM_APPLY, in_process_env, run_in_process
from tests.e2e.conftest import closed_port
from tests.platform_files import SHA, change, plan


def run(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PLATFORM_APPLY), *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def command_names() -> list[str]:
    (commands,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(commands.choices)


@pytest.fixture
def unreachable_env(tmp_path, monkeypatch) -> dict[str, str]:
    # Nothing listens there: a command that got past its usage check would exit 2, not 64.
    env = {"PATH": "/usr/bin:/bin", "TEMPORAL_ADDRESS": f"127.0.0.1:{closed_port()}", "PLATFORM_ROOT": str(tmp_path)}
    in_process_env(monkeypatch, env)
    return env


def test_help_prints_to_stdout_and_nothing_to_stderr(unreachable_env, capsys):
    # As operators run it: no dependency's warnings either (dependency_warnings.py).
    done = run("--help", env=unreachable_env)
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout.startswith("usage: platform-apply"), done.stdout
    commands = command_names()
    assert {"apply", "approve", "reject", "rollback", "status", "reapply", "locks", "doctor", "sign"} <= set(commands)
    for command in commands:
        assert run_in_process(command, "--help") == 0, command
        out, err = capsys.readouterr()
        assert out.startswith(f"usage: platform-apply {command}") and err == "", (command, out, err)


def test_a_setting_the_worker_refuses_exits_64(unreachable_env, monkeypatch, capsys):
    monkeypatch.setenv("PLATFORM_HEARTBEAT_TIMEOUT_SECONDS", "30s")
    assert run_in_process("locks") == 64
    assert "PLATFORM_HEARTBEAT_TIMEOUT_SECONDS must be a whole number" in capsys.readouterr().err


def test_usage_errors_exit_64(tmp_path, unreachable_env, capsys):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan()))
    not_json = tmp_path / "not.json"
    not_json.write_text("{nope")
    no_plan = tmp_path / "no-plan.json"
    no_plan.write_text(json.dumps({"changes": []}))
    p = str(plan_file)
    cases = [
        [],
        ["apply", str(tmp_path)],
        ["sign", "--module", "Bad Module", "--sha", SHA, "--pr", "1"],
        ["sign", "--module", "m", "--sha", "abc", "--pr", "1"],
        ["sign", "--module", "m", "--sha", SHA, "--pr", "-1"],
        ["frobnicate"],
        ["apply"],
        ["apply", p, "--approve-pr", "x"],
        ["apply", p, "--approve-sha", SHA],
        ["apply", p, "--approve-pr", "165"],
        ["apply", p, "--approved-by", "ci"],
        ["apply", p, "--allow-destructive"],
        ["apply", p, "--approve-sha", SHA, "--approve-pr", "1", "--expires-at", "tomorrow"],
        ["apply", p, "--approve-sha", SHA, "--approve-pr", "1", "--expires-at", "2026-11-28T12:00:00"],
        ["apply", str(tmp_path / "missing.json")],
        ["apply", str(not_json)],
        ["apply", str(no_plan)],
        ["apply", p, "--no-such-flag"],
        ["approve", "apply-x"],
        ["approve", "apply-x", "--sha", SHA],
        ["approve", "apply-x", "--sha", SHA, "--pr", "one"],
        # What is approved comes from a plan file or all three flags, never from the workflow.
        ["approve", "apply-x", "--sha", SHA, "--pr", "1"],
        ["approve", "apply-x", "--module", "m", "--sha", SHA, "--pr", "1"],
        ["approve", "apply-x", "--plan", p, "--sha", "f" * 40, "--pr", "1"],
        ["approve", "apply-x", "--plan", p, "--module", "m", "--pr", "1"],
        ["approve", "apply-x", "--module", "m", "--sha", SHA, "--plan-digest", "sha256:" + "0" * 64, "--pr", "1"],
        ["reject", "apply-x"],
        ["locks", "extra"],
        ["doctor"],
        ["sign", "--module", "m", "--sha", SHA],
        ["sign", "--module", "m", "--sha", SHA, "--pr", "1"],  # no PLATFORM_APPROVAL_KEY_FILE to sign with
        ["status", "m1", "m2"],
        ["reapply", "--max-parallel", "many"],
        ["reapply", "--max-parallel", "0"],  # ReapplyInput takes 1-64: it would fail at once
        ["reapply", "--max-parallel", "65"],
        ["schedule", "m1"],  # neither --every nor --cron
        ["schedule", "--every", "0"],
        ["schedule", "--every", "-5"],
        ["schedule", "--every", "60", "--max-parallel", "0"],
        ["statuz"],  # not a command of this tool
    ]
    for args in cases:
        code = run_in_process(*args)
        err = capsys.readouterr().err
        assert code == 64, (args, code, err)
        assert err.strip() and "Traceback" not in err, (args, err)


@pytest.mark.parametrize(
    "text, message",
    [
        (json.dumps(plan(changes=[{"summary": "x" * 4000}] * 80)), "over the 262144-byte bound"),
        (" " * (4 << 20) + json.dumps(plan()), "is over 4194304 bytes"),  # past the server's message limit
        (json.dumps({"plan": plan(), "approval": {"x": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}}), "nests deeper than"),
        ("[" * 100_000 + "]" * 100_000, "nests deeper than"),  # past the JSON parser's own recursion limit
    ],
    ids=["over-256-KiB", "over-4-MiB", "too-deep", "past-the-parsers-limit"],
)
def test_input_past_a_bound_exits_3_before_anything_is_contacted(
    tmp_path, unreachable_env, capsys, text, message
):
    # Were an unreachable server (2: past the server's 4 MB message limit) or a traceback (1).
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(text)
    code = run_in_process("apply", str(plan_file))
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err, err
    assert message in err and "blocked, nothing was started" in err, err


def test_the_bound_is_on_what_is_sent_not_on_how_the_file_is_laid_out(tmp_path, unreachable_env):
    # 270 KB as written, 112 KB sent: past its checks, the command goes on to the server.
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan(changes=[{**change("honcho-redis"), "summary": "x" * 300}] * 300), indent=40))
    assert plan_file.stat().st_size > 256 * 1024
    done = subprocess.run(
        ["bash", "-c", f'"{PLATFORM_APPLY}" apply <(cat "{plan_file}")'], env=unreachable_env,
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2 and "cannot reach Temporal" in done.stderr, done  # a pipe is read too


def test_an_unreachable_server_exits_2_with_one_line(tmp_path, unreachable_env):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan()))
    address = unreachable_env["TEMPORAL_ADDRESS"]
    for args in (
        ["apply", str(plan_file)],
        ["apply", str(plan_file), "--approve-sha", SHA, "--approve-pr", "165", "--no-wait"],
        ["approve", "apply-x", "--module", "m", "--sha", SHA, "--plan-digest", "0" * 64, "--pr", "165"],
        ["reject", "apply-x", "--reason", "no"],
        ["locks"],
    ):
        started = time.monotonic()
        done = run(*args, env=unreachable_env)
        assert (done.returncode, done.stdout) == (2, ""), (args, done.returncode, done.stdout, done.stderr)
        assert time.monotonic() - started < 15, args
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and "cannot reach Temporal" in lines[0] and address in lines[0], (args, done.stderr)


def test_progress_on_a_terminal_is_one_updating_line_with_a_spinner(tmp_path):
    out = tmp_path / "tty"
    with out.open("w", newline="") as stream:
        progress = Progress("apply-m-0123", stream, tty=True)
        for phase in ("validating", "waiting_for_lock", "applying"):
            progress.show({"phase": phase, "lock": "platform-lock:h:core"})
            progress.tick()
            progress.tick()
        progress.close()
    text = out.read_bytes().decode()
    assert "\n" not in text  # one line, rewritten in place
    frames = text.split("\r\x1b[K")[1:]
    assert frames[-1] == ""  # cleared at the end, so the summary line starts clean
    assert [f[2:] for f in frames[:-1]] == [
        "apply-m-0123: validating",
        "apply-m-0123: validating",
        "apply-m-0123: waiting_for_lock (platform-lock:h:core)",
        "apply-m-0123: waiting_for_lock (platform-lock:h:core)",
        "apply-m-0123: applying",
        "apply-m-0123: applying",
    ]
    assert len({f[0] for f in frames[:-1]}) > 1  # the spinner turns


def test_progress_elsewhere_is_one_plain_line_per_phase_change(tmp_path):
    out = tmp_path / "log"
    with out.open("w") as stream:
        progress = Progress("apply-m-0123", stream, tty=False)
        for phase in ("validating", "validating", "applying", "applying", "done"):
            progress.show({"phase": phase})
            progress.tick()
        progress.close()
    assert out.read_text().splitlines() == [
        "apply-m-0123: validating",
        "apply-m-0123: applying",
        "apply-m-0123: done",
    ]


def test_a_summary_line_prints_what_a_result_holds_as_text():
    """A result from a worker before results were stored as plain text may still hold a
    host's escape sequences: the summary line must not let them redraw it."""
    error = "compose ps exited 1: boom\x1b[2K\x1b[1Gapplied app@rs2000 3f5e1c0 exit 9\r"
    outcome = {"status": "unhealthy", "module": "app", "host": "rs2000", "exitCode": 8, "error": error}
    line = summary_line(outcome, SHA)
    shown = "compose ps exited 1: boomapplied app@rs2000 3f5e1c0 exit 9\\r"  # the \\r written out
    assert line == f"unhealthy app@rs2000 {SHA[:7]} exit 8: {shown}"


def test_status_and_locks_lines_show_what_a_namespace_user_wrote_as_plain_text():
    """approved_by comes from a signal and a lock's state from a query: an OSC or a
    newline in them must not retitle the terminal or forge a line of its own."""
    forged = "ops\x1b]0;pwned\x07\nother-module: 0123456789ab PR #1 applied"
    last = AppliedRecord.model_construct(
        sha=SHA, pr=7, at="2026-12-07T00:00:00Z", approved_by=forged, workflow_id="apply-m-0123"
    )
    line = state_line(ModuleState(module="m").model_copy(update={"last_applied": last}), None)
    assert line == (
        f"m: {SHA[:12]} PR #7 applied 2026-12-07T00:00:00Z by ops other-module: 0123456789ab PR #1 applied"
        " (apply-m-0123)"
    )
    held = lock_line("platform-lock:h:p", {"holder": "a\x9b2J\x1b[1A", "waiting": ["b\nh/q held by c"]})
    assert held == "h/p held by a (waiting: b h/q held by c)"


async def test_an_approval_no_worker_answers_in_time_exits_2_not_a_traceback(monkeypatch):
    class Stuck:
        """A handle whose Update is never answered; a cancelled wait ends as the SDK ends it."""

        id = "apply-x"

        async def execute_update(self, name: str, arg: object) -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise WorkflowUpdateRPCTimeoutOrCancelledError() from None

    monkeypatch.setattr(approve, "UPDATE_TIMEOUT_S", 0.05)
    with pytest.raises(CliError) as stuck:
        await approve.send_approval(Stuck(), {})  # type: ignore[arg-type]
    assert stuck.value.code == 2 and "did not answer the approval within 0.05 s" in stuck.value.message


def test_sign_refuses_an_expiry_in_the_past(tmp_path, monkeypatch, capsys):
    """A signature the worker would always refuse as expired is a usage error, not a success."""
    key = tmp_path / "approval.key"
    key.write_text("a-test-approval-key-of-32-bytes!\n")
    monkeypatch.setenv("PLATFORM_APPROVAL_KEY_FILE", str(key))
    sign = ["sign", "--module", "m", "--sha", SHA, "--plan-digest", "0" * 64, "--pr", "1"]
    assert run_in_process(*sign, "--expires-at", "2026-01-01T00:00:00Z") == 64
    assert "is in the past: the worker would refuse it as expired" in capsys.readouterr().err
    assert run_in_process(*sign, "--expires-at", "2099-01-01T00:00:00Z") == 0
    assert '"expires_at":"2099-01-01T00:00:00Z"' in capsys.readouterr().out
