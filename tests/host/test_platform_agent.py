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
    release(host, run)
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
    # A TTL shorter than compose up: the lease must not lapse under it.
    first = subprocess.Popen(gate_argv(root, "--state", str(agent), "--lease-ttl", "1"),
                             env=gate_env(command, state), stdout=subprocess.PIPE, text=True)
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
        # Past its TTL, still held: doctor and `locks --hosts` show it while compose runs.
        [lease] = verb(host, commands.agent_check())["leases"]
        assert (lease["run"], lease["step"], lease["expires_in"]) == (holder, "apply", 0), lease
        (state / "release").touch()
        assert json.loads(first.communicate(timeout=10)[0])["returncode"] == 0
    finally:
        first.kill()
        first.wait()
    release(host, holder)
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
        f"platform-agent apply not-a-uuid 30 {compose} redis {SHA} --lease",
        f"platform-agent apply {run_id()} 0 {compose} redis {SHA} --lease",
        f"platform-agent apply {run_id()} 3601 {compose} redis {SHA} --lease",
        f"platform-agent apply {run_id()} 30 /etc/compose.yaml redis {SHA} --lease",
        f"platform-agent apply {run_id()} 30 {root}/.env/x.yml redis {SHA} --lease",
        f"platform-agent apply {run_id()} 30 {compose} 'redis;id' {SHA} --lease",
        f"platform-agent apply {run_id()} 30 {compose} redis HEAD --lease",
        f"platform-agent apply {run_id()} 30 {compose} redis --lease",
        f"platform-agent apply {run_id()} 30 {compose} redis {SHA}",  # a v2 worker's: no lease
        f"platform-agent apply {run_id()} 30 {compose} redis {SHA} --leased",
        f"platform-agent logs {run_id()} extra",
        f"platform-agent release {run_id()} {run_id()}",
        "platform-agent release",
        "platform-agent check now",
        f"platform-agent health {run_id()} {compose} redis extra",
        f"platform-agent health {run_id()} /etc/compose.yaml redis",
        f"platform-agent rollback {run_id()} 30 {compose} redis sha256:{'c' * 64}",
        f"platform-agent rollback {run_id()} 0 {compose} redis",
        f"platform-agent rollback {run_id()} 30 {root}/secrets/x.yml redis",
    ):
        result = run_gate(root, state, command, "--state", str(agent))
        assert result.returncode == commands.GATE_REFUSED, command
    assert recorded(state) == []


def test_a_pinned_rollback_waits_for_a_running_apply_then_is_refused_inside_its_lease(host):
    """Compose up outlives its session; an operator's rollback sent meanwhile must not
    run beside it: the gate holds it until the project's lock is free, then refuses it
    while the apply's lease is held (its health check is under way)."""
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
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        second.stdin.write(rollback.stdin)
        second.stdin.close()
        time.sleep(1.5)
        assert second.poll() is None and received_stdin(state) == []  # waiting, nothing ran
        (state / "release").touch()
        assert second.wait(timeout=20) == commands.GATE_REFUSED
        assert b"is leased to run" in second.stderr.read()
        assert first.wait(timeout=10) == 0
    finally:
        first.kill()
    assert received_stdin(state) == []
    assert len((state / "spans.jsonl").read_text().splitlines()) == 1


def verb(host, command: commands.RemoteCommand, *options: str) -> dict:
    """The agent's answer to `command`, read by the worker's model too."""
    root, state, agent = host
    result = run_gate(root, state, command.render(), "--state", str(agent), *options)
    assert result.returncode == 0, result.stderr
    agent_answer(result.stdout, command.argv[2] if len(command.argv) > 2 else None, command.argv[1])
    return json.loads(result.stdout)


def release(host, run: str) -> dict:
    return verb(host, commands.agent_release(run))


def health(host, run: str, *options: str) -> dict:
    return verb(host, commands.agent_health(run, f"{host[0]}/{COMPOSE_FILE}", "redis"), *options)


def rollback(host, run: str, *options: str) -> dict:
    return verb(host, commands.agent_rollback(run, 30, f"{host[0]}/{COMPOSE_FILE}", "redis"), *options)


def test_the_lease_holds_the_project_from_compose_up_until_its_run_releases_it(host):
    """A forged hand-over of the control plane's lock cannot start another apply's
    compose up during this one's health check: the host answers busy until release."""
    _, state, _ = host
    first, second = run_id(), run_id()
    ran = apply(host, first)
    assert ran["answer"] == "ran" and ran["lease_ttl"] == platform_agent.LEASE_TTL_S
    started = time.monotonic()
    busy = apply(host, second)
    assert (busy["answer"], busy["holder"]) == ("busy", first) and 590 <= busy["expires_in"] <= 600, busy
    assert time.monotonic() - started < 3  # a lease, unlike a running compose, is answered at once
    assert health(host, first)["lease"] == "held"
    assert health(host, second)["lease"] == "none"  # a run that did not apply only looks
    assert release(host, second)["released"] == 0  # nor can it free another run's lease
    assert apply(host, second)["answer"] == "busy" and len(ups(state)) == 1
    assert release(host, first)["released"] == 1
    assert apply(host, second)["answer"] == "ran" and len(ups(state)) == 2


def test_an_expired_lease_is_taken_back_by_its_run_or_lost_to_another(host):
    _, state, _ = host
    first, second = run_id(), run_id()
    apply(host, first, SHA, 30, "--lease-ttl", "1")
    time.sleep(1.2)
    assert health(host, first, "--lease-ttl", "1")["lease"] == "retaken"  # still free: its stable window restarts
    time.sleep(1.2)
    assert apply(host, second, SHA, 30, "--lease-ttl", "1")["answer"] == "ran"  # expired: free for the next
    lost = health(host, first, "--lease-ttl", "1")
    assert (lost["answer"], lost["holder"]) == ("lease_lost", second)
    assert rollback(host, first, "--lease-ttl", "1")["answer"] == "lease_lost"
    assert received_stdin(state) == []


def test_a_lease_from_before_a_reboot_counts_its_ttl_from_boot(host, monkeypatch):
    lease = {"run": run_id(), "boot_id": "another-boot", "expiry": 10**9, "ttl": 600}
    monkeypatch.setattr(platform_agent, "_boottime", lambda: 100.0)
    assert platform_agent._expires_in(lease) == 500
    monkeypatch.setattr(platform_agent, "_boottime", lambda: 700.0)
    assert platform_agent._expires_in(lease) == -100


def test_health_reports_each_container_as_facts_with_exit_code_and_restarts(host):
    _, state, _ = host
    run = run_id()
    apply(host, run)
    (state / "behaviour" / "redis").write_text("exited")
    seen = health(host, run)
    assert seen["containers"] == [{"state": "exited", "health": "", "exit_code": 1, "restart_count": 0}]
    (state / "behaviour" / "redis").write_text("crash_loop")
    counts = [health(host, run)["containers"][0]["restart_count"] for _ in range(2)]
    assert counts[1] > counts[0]
    assert "Labels" not in json.dumps(seen)  # facts only: no text of the host's


@pytest.mark.parametrize("mode", ["exited", "unhealthy"])
def test_a_failing_container_leaves_its_last_log_lines_and_probe_output_on_the_host(host, mode):
    root, state, agent = host
    run = run_id()
    apply(host, run)
    assert health(host, run)["logs_kept"] == 0  # healthy: nothing is kept, nothing costs
    assert not any(".health." in p.name for p in (agent / "output").iterdir())
    (state / "behaviour" / "redis").write_text(mode)
    seen = health(host, run)
    assert seen["logs_kept"] == 1
    assert "postgres://" not in json.dumps(seen) and "POSTGRES_PASSWORD" not in json.dumps(seen)
    shown = run_gate(root, state, commands.agent_logs(run).render(), "--state", str(agent), "--read-only")
    assert shown.returncode == 0
    assert "giving up" in shown.stdout and "DATABASE_URL=postgres://" in shown.stdout  # the container's lines
    assert "probe failed" in shown.stdout and "POSTGRES_PASSWORD=" in shown.stdout  # its healthcheck's output
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (agent / "output").iterdir())


def test_rollback_pins_the_image_the_agent_recorded_once_per_run(host):
    _, state, _ = host
    before, after = "sha256:" + "b" * 64, "sha256:" + "c" * 64
    (state / "behaviour" / "redis").write_text(f"succeed image={before},{after}")
    run = run_id()
    apply(host, run)
    back = rollback(host, run)
    assert (back["answer"], back["returncode"], back["image_id"]) == ("ran", 0, before)
    [(argv, pin)] = received_stdin(state)
    assert pin == commands.image_pin("redis", before)
    assert rollback(host, run) == {**back, "replayed": True} and len(received_stdin(state)) == 1
    assert rollback(host, run_id())["reason"] == "not_applied"  # a run that applied nothing here
    assert len(received_stdin(state)) == 1


def test_a_pinned_rollback_of_a_service_the_file_does_not_define_is_refused(host):
    root, state, agent = host
    command = commands.compose_rollback(f"{root}/{COMPOSE_FILE}", "ghost", "sha256:" + "c" * 64)
    refused = run_gate(root, state, command.render(), "--state", str(agent), stdin=command.stdin)
    assert refused.returncode == commands.GATE_REFUSED and "not defined" in refused.stderr
    assert received_stdin(state) == []


def test_check_lists_the_held_leases_and_an_admin_breaks_one_on_the_host(host):
    root, state, agent = host
    run = run_id()
    apply(host, run)
    checked = verb(host, commands.agent_check(), "--read-only")  # the operators' key may ask
    assert checked["agent"] == commands.AGENT_PROTOCOL
    assert [(x["project"], x["run"], x["step"]) for x in checked["leases"]] == [("core", run, "apply")]
    broke = subprocess.run(
        [sys.executable, str(REPO / "host" / "platform_agent.py"), "break-lease", "core", "--state", str(agent)],
        capture_output=True, text=True, timeout=10,
    )
    assert broke.returncode == 0 and run in broke.stdout, broke
    assert verb(host, commands.agent_check())["leases"] == []
    assert apply(host, run_id())["answer"] == "ran"
