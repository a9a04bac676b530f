"""host/platform_agent.py through the gate, as sshd runs it: compose up once per run,
one at a time per project, at the approved commit, its output kept on the host."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from platformctl import commands
from platformctl.policy import remote_output
from platformctl.policy.remote_output import agent_answer
from tests.sshd import COMPOSE_FILE, REPO
from tests.transport.test_gate import gate_argv, gate_env, make_root, received_stdin, recorded, run_gate

SHA = "a" * 40  # what the stand-in git reports as HEAD (make_root)
SECRET = "hunter2-agent-only"

sys.path.insert(0, str(REPO / "host"))
import platform_agent  # noqa: E402  (stdlib only; installed beside the gate on hosts)


@pytest.fixture
def host(tmp_path):
    root, state = make_root(tmp_path)
    return root, state, tmp_path / "agent"


def run_id() -> str:
    return str(uuid.uuid4())


def apply(host, run: str, sha: str = SHA, timeout: int = 30, *options: str) -> dict:
    root, state, agent = host
    command = commands.agent_apply(run, timeout, f"{root}/{COMPOSE_FILE}", "redis", sha if sha != "-" else None)
    result = run_gate(root, state, command.render(), "--state", str(agent), *options)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    agent_answer(result.stdout, run)  # the worker reads every answer as typed facts
    return answer


def ups(state: Path) -> list[list[str]]:
    return [argv for argv in recorded(state) if argv[4:5] == ["up"]]


def test_the_same_run_again_gets_the_recorded_outcome_and_never_runs_up_twice(host):
    _, state, _ = host
    run = run_id()
    first = apply(host, run)
    again = apply(host, run)
    assert first["answer"] == "ran" and first["returncode"] == 0 and first["replayed"] is False
    assert first["progress"] == ["Container core-redis-1 Recreate", "Container core-redis-1 Recreated",
                                 "Container core-redis-1 Starting", "Container core-redis-1 Started"]
    assert again == {**first, "replayed": True}
    assert len(ups(state)) == 1
    assert apply(host, run_id())["replayed"] is False and len(ups(state)) == 2  # another run runs


def test_the_same_run_asking_something_else_is_a_conflict(host):
    _, state, _ = host
    run = run_id()
    apply(host, run)
    assert apply(host, run, timeout=31)["answer"] == "run_conflict"
    assert len(ups(state)) == 1


def test_a_run_whose_agent_died_after_it_started_is_interrupted_never_run_again(host):
    _, state, agent = host
    run = run_id()
    apply(host, run_id())  # creates the agent's folders
    request = json.dumps([f"{host[0]}/{COMPOSE_FILE}", "redis", SHA, 30])
    (agent / "runs" / f"{run}.up.json").write_text(json.dumps(
        {"format": 1, "request": hashlib.sha256(request.encode()).hexdigest(), "state": "started"}
    ))
    assert apply(host, run)["answer"] == "interrupted"
    assert len(ups(state)) == 1


def test_runs_of_one_project_never_overlap_and_a_long_one_answers_busy(host):
    root, state, agent = host
    (state / "behaviour" / "redis").write_text("hold spans=on")
    holder = run_id()
    command = commands.agent_apply(holder, 60, f"{root}/{COMPOSE_FILE}", "redis", SHA).render()
    first = subprocess.Popen(gate_argv(root, "--state", str(agent)), env=gate_env(command, state),
                             stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not (state / "hang.pid").exists():
            assert time.monotonic() < deadline, "compose up never started"
            time.sleep(0.05)
        started = time.monotonic()
        busy = apply(host, run_id())
        assert busy["answer"] == "busy" and busy["holder"] == holder, busy
        assert time.monotonic() - started >= platform_agent.LOCK_WAIT_S - 0.5  # waited a few seconds first
        assert len(ups(state)) == 1
        (state / "release").touch()
        assert json.loads(first.communicate(timeout=10)[0])["returncode"] == 0
    finally:
        first.kill()
        first.wait()
    (state / "behaviour" / "redis").write_text("slow spans=on")
    apply(host, run_id())
    spans = [json.loads(line) for line in (state / "spans.jsonl").read_text().splitlines()]
    assert len(spans) == 2 and spans[1]["start"] >= spans[0]["end"]


@pytest.mark.parametrize(
    "head, dirty, expected",
    [("b" * 40, "", {"head": "b" * 40, "dirty": False}), (SHA, " M compose/core/compose.yaml\n",
                                                         {"head": SHA, "dirty": True})],
    ids=["another commit", "a local edit"],
)
def test_compose_up_runs_only_at_the_approved_commit_unedited(host, head, dirty, expected):
    _, state, _ = host
    (state / "head_sha").write_text(head + "\n")
    if dirty:
        (state / "dirty").write_text(dirty)
    answer = apply(host, run_id())
    assert (answer["answer"], answer["reason"]) == ("refused", "checkout")
    assert {k: answer[k] for k in ("head", "dirty")} == expected
    assert ups(state) == []
    assert apply(host, run_id(), sha="-")["answer"] == "ran"  # a host that opted out: no git at all


def test_compose_up_is_killed_at_its_timeout(host):
    _, state, _ = host
    (state / "behaviour" / "redis").write_text("hang")
    answer = apply(host, run_id(), timeout=1)
    assert (answer["answer"], answer["timed_out"], answer["returncode"], answer["error_class"]) == (
        "ran", True, None, "timeout"
    )
    pid = int((state / "hang.pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_output_stays_on_the_host_and_logs_prints_it(host):
    root, state, agent = host
    (state / "behaviour" / "redis").write_text("corpus exit=1")
    (state / "corpus.txt").write_text(f'invalid interpolation format for "DB_PASSWORD": "{SECRET}"\n')
    run = run_id()
    result = run_gate(root, state, commands.agent_apply(run, 30, f"{root}/{COMPOSE_FILE}", "redis", SHA).render(),
                      "--state", str(agent))
    assert SECRET not in result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert (answer["returncode"], answer["error_class"]) == (1, "interpolation")
    assert answer["output_bytes"] > len(SECRET) and len(answer["output_sha256"]) == 64
    assert stat.S_IMODE(os.stat(agent).st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (agent / "output").iterdir())
    # The operator's read-only key may read it, and may not apply.
    shown = run_gate(root, state, commands.agent_logs(run).render(), "--state", str(agent), "--read-only")
    assert shown.returncode == 0 and SECRET in shown.stdout
    refused = run_gate(root, state, commands.agent_apply(run_id(), 30, f"{root}/{COMPOSE_FILE}", "redis", SHA).render(),
                       "--state", str(agent), "--read-only")
    assert refused.returncode == commands.GATE_REFUSED and "read-only" in refused.stderr
    missing = run_gate(root, state, commands.agent_logs(run_id()).render(), "--state", str(agent), "--read-only")
    assert missing.returncode == platform_agent.NO_OUTPUT


def test_the_agent_and_the_worker_share_one_vocabulary():
    assert platform_agent.CLASSES == remote_output._CLASSES
    assert platform_agent.PROGRESS.pattern == remote_output._PROGRESS.pattern
    assert platform_agent.MAX_PROGRESS == remote_output.MAX_PROGRESS
    assert platform_agent.PROTOCOL == commands.AGENT_PROTOCOL


def test_the_gate_refuses_agent_verbs_outside_their_shape(host):
    root, state, agent = host
    compose = f"{root}/{COMPOSE_FILE}"
    for command in (
        f"platform-agent apply not-a-uuid 30 {compose} redis {SHA}",
        f"platform-agent apply {run_id()} 0 {compose} redis {SHA}",
        f"platform-agent apply {run_id()} 3601 {compose} redis {SHA}",
        f"platform-agent apply {run_id()} 30 /etc/compose.yaml redis {SHA}",
        f"platform-agent apply {run_id()} 30 {root}/.env/x.yml redis {SHA}",
        f"platform-agent apply {run_id()} 30 {compose} 'redis;id' {SHA}",
        f"platform-agent apply {run_id()} 30 {compose} redis HEAD",
        f"platform-agent apply {run_id()} 30 {compose} redis",
        f"platform-agent logs {run_id()} extra",
        f"platform-agent release {run_id()}",
    ):
        result = run_gate(root, state, command, "--state", str(agent))
        assert result.returncode == commands.GATE_REFUSED, command
    assert recorded(state) == []


def test_an_image_rollback_waits_for_a_running_apply_of_its_project(host):
    """Compose up outlives its session; a rollback sent meanwhile (a cancelled apply's)
    must not run beside it: the gate holds the rollback until the project is free."""
    root, state, agent = host
    (state / "behaviour" / "redis").write_text("hold spans=on")
    up = commands.agent_apply(run_id(), 60, f"{root}/{COMPOSE_FILE}", "redis", SHA).render()
    first = subprocess.Popen(gate_argv(root, "--state", str(agent)), env=gate_env(up, state), stdout=subprocess.PIPE)
    rollback = commands.compose_rollback(f"{root}/{COMPOSE_FILE}", "redis", "sha256:" + "c" * 64)
    try:
        deadline = time.monotonic() + 10
        while not (state / "hang.pid").exists():
            assert time.monotonic() < deadline, "compose up never started"
            time.sleep(0.05)
        second = subprocess.Popen(gate_argv(root, "--state", str(agent)), env=gate_env(rollback.render(), state),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        second.stdin.write(rollback.stdin)
        second.stdin.close()
        time.sleep(1.5)
        assert second.poll() is None and received_stdin(state) == []  # waiting, nothing ran
        (state / "release").touch()
        assert second.wait(timeout=20) == 0 and first.wait(timeout=10) == 0
    finally:
        first.kill()
    spans = [json.loads(line) for line in (state / "spans.jsonl").read_text().splitlines()]
    assert len(spans) == 2 and spans[1]["start"] >= spans[0]["end"], spans
