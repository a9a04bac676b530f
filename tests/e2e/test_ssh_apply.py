"""Applies with the gate open: the real worker process, a real Temporal dev
server, real OpenSSH sshds (tests/sshd.py) and the stand-in docker.

Every host entry is what an operator would write in hosts.yaml: address,
port, non-root user, remote_root, the pinned host key line and the client key.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from temporalio.common import SearchAttributeKey

from platformctl.policy.plan import plan_digest
from platformctl.transport.fake import runless
from tests.e2e.conftest import (
    FAST_HEALTH,
    VENV_BIN,
    activity_attempts,
    compose_ps_argv,
    compose_up_argv,
    connection_attempts,
    json_text,
    ssh_host_entry,
    write_hosts,
    write_module,
    wrong_host_key_line,
)
from tests.platform_files import SHA, apply_input, change, plan
from tests.secret_corpus import HOST_ONLY, LEAKS
from tests.sshd import SshHost, eventually, make_keypair, process_running

PR = 165


def request(module: str, service: str) -> dict:
    return apply_input(plan(module=module, changes=[change(service)]))


def workflow_id(tag: str) -> str:
    return f"apply-e2e-{tag}-{uuid.uuid4().hex[:8]}"


def git_head_argv(host: SshHost) -> list[str]:
    return ["git", "-C", host.remote_root, "rev-parse", "HEAD"]


def images_argv(host: SshHost, service: str) -> list[str]:
    return ["docker", "compose", "-f", host.compose_path, "images", "--format", "json", service]


def rollback_argv(host: SshHost, service: str) -> list[str]:
    return [
        "docker", "compose", "-f", host.compose_path, "-f", "-", "up", "-d", "--no-deps", "--no-build",
        "--pull", "never", service,
    ]


def before_up(host: SshHost, service: str) -> list[list[str]]:
    """The checkout check (verify_checkout is on by default) and the image snapshot,
    read side by side in either order, then the agent's `apply`: the checkout again
    (HEAD, no local edit), its own image snapshot (what its `rollback` goes back to), compose up."""
    return [
        git_head_argv(host), images_argv(host, service),
        git_head_argv(host), ["git", "-C", host.remote_root, "status", "--porcelain", "--untracked-files=no"],
        images_argv(host, service), compose_up_argv(host, service),
    ]  # fmt: skip


UP = 6  # before_up's calls, compose up the last


def reads_in_order(calls: list[list[str]]) -> list[list[str]]:
    """`calls` with its first two (the two reads made side by side) in before_up's order."""
    return sorted(calls[:2], key=lambda argv: argv[0] != "git") + calls[2:]


def only_up_then_ps(host: SshHost, service: str, min_ps: int = 1) -> list[list[str]]:
    """A healthy apply: checkout, snapshot, compose up, then only ps polls and, listed
    while they run, the images compose up left running."""
    calls = reads_in_order(host.calls())
    assert calls[:UP] == before_up(host, service), calls
    after = calls[UP:]
    assert after.count(images_argv(host, service)) == 1, calls
    polls = [c for c in after if c != images_argv(host, service)]
    assert len(polls) >= min_ps and all(c == compose_ps_argv(host, service) for c in polls), calls
    return calls


@pytest.fixture
def ssh_e2e(e2e, sshd_host):
    write_hosts(e2e.root, {"h1": ssh_host_entry(sshd_host)})
    return e2e


# ---- success ---------------------------------------------------------------


async def test_applied_runs_exactly_up_then_ps_and_records_state(ssh_e2e, sshd_host):
    e2e = ssh_e2e
    write_module(e2e.root, "e2e-ok", "h1", "svc-ok")
    worker = await e2e.start_worker()
    assert "EXECUTING remote commands" in worker.log()
    wid = workflow_id("ok")

    out = await e2e.outcome(await e2e.start(request("e2e-ok", "svc-ok"), workflow_id=wid))

    assert out.status == "applied", out.result
    r = out.result
    assert r["exitCode"] == 9 and out.error_type is None and r["error"] is None and r["rollback"] is None
    assert (r["module"], r["host"], r["compose_service"]) == ("e2e-ok", "h1", "svc-ok")
    assert runless(r["command"]) == f"platform-agent apply RUN 300 {sshd_host.compose_path} svc-ok {SHA} --lease"
    assert r["remote"]["returncode"] == 0
    assert r["remote"]["progress"][-1] == "Container core-svc-ok-1 Started" and r["remote"]["error_class"] is None
    assert (r["health"]["state"], r["health"]["health"]) == ("running", "healthy")
    assert r["health"]["observed_s"] >= FAST_HEALTH["stable_seconds"]
    # Exactly the contract's command, then only read-only polls (>= 3 for a 2 s window polled every 1 s).
    only_up_then_ps(sshd_host, "svc-ok", min_ps=3)
    # One pooled connection carried the up and every ps.
    assert sshd_host.connection_count() == 1

    status_path = e2e.status_file("e2e-ok")
    assert r["state_artifact"] == str(status_path)
    status = json.loads(status_path.read_text())
    assert status["module"] == "e2e-ok" and status["host"] == "h1" and status["compose_service"] == "svc-ok"
    assert status["last_apply_sha"] == SHA and status["last_apply_pr"] == PR
    assert status["workflow_id"] == wid and status["status"] == "applied"
    assert status["plan_digest"] == plan_digest(request("e2e-ok", "svc-ok")["plan"])
    assert status["applied_at"]
    audit = e2e.audit()
    assert len(audit) == 1
    line = audit[0]
    assert (line["workflow_id"], line["status"], line["exitCode"]) == (wid, "applied", 9)
    assert (line["source_sha"], line["approved_pr"], line["plan_digest"]) == (SHA, PR, status["plan_digest"])

    attrs = (await out.handle.describe()).typed_search_attributes
    assert attrs.get(SearchAttributeKey.for_keyword("PlatformStatus")) == "applied"
    assert attrs.get(SearchAttributeKey.for_keyword("PlatformHost")) == "h1"


# ---- the remote side fails -------------------------------------------------


async def test_compose_up_fails_remote_failed_with_rollback(ssh_e2e, sshd_host):
    e2e = ssh_e2e
    write_module(e2e.root, "e2e-fail", "h1", "svc-fail")
    sshd_host.set_behaviour("svc-fail", "fail")
    worker = await e2e.start_worker()
    wid = workflow_id("fail")

    out = await e2e.outcome(await e2e.start(request("e2e-fail", "svc-fail"), workflow_id=wid))

    assert (out.status, out.error_type, out.result["exitCode"]) == ("remote_failed", "RemoteFailed", 4)
    r = out.result
    assert r["remote"]["returncode"] == 1
    assert r["remote"]["error_class"] == "unknown" and r["remote"]["output_bytes"] > 0
    assert "exited with code 1" in r["error"]
    assert r["rollback"] is not None and r["rollback"]["last_good_sha"] is None
    # no health polls after a failed up: the rollback, then the polls of its own health smoke
    calls = reads_in_order(sshd_host.calls())
    assert calls[: UP + 1] == [*before_up(sshd_host, "svc-fail"), rollback_argv(sshd_host, "svc-fail")], calls
    assert calls[UP + 1 :] and all(c == compose_ps_argv(sshd_host, "svc-fail") for c in calls[UP + 1 :]), calls
    assert r["rollback"]["image"]["outcome"] == "restored"
    status = json.loads(e2e.status_file("e2e-fail").read_text())
    assert status["status"] == "remote_failed" and status["last_apply_sha"] is None
    assert status["last_failure"]["source_sha"] == SHA and status["last_failure"]["workflow_id"] == wid
    assert [(a["workflow_id"], a["status"], a["exitCode"]) for a in e2e.audit()] == [(wid, "remote_failed", 4)]
    assert "ROLLBACK module=e2e-fail" in worker.log()


async def test_hung_compose_up_is_killed_at_its_timeout(ssh_e2e, sshd_host):
    e2e = ssh_e2e
    write_module(e2e.root, "e2e-hang", "h1", "svc-hang", up_timeout_seconds=2)
    sshd_host.set_behaviour("svc-hang", "hang")
    await e2e.start_worker()

    out = await e2e.outcome(await e2e.start(request("e2e-hang", "svc-hang")), timeout_s=60)

    assert (out.status, out.error_type, out.result["exitCode"]) == ("remote_failed", "RemoteFailed", 4)
    assert out.seconds < 20, f"took {out.seconds:.1f} s for a 2 s timeout"
    r = out.result
    assert "still running after 2 seconds" in r["error"]
    assert r["remote"]["returncode"] is None
    assert r["remote"]["progress"] == ["Container core-svc-hang-1 Creating"]  # what it printed up to the kill
    assert r["remote"]["error_class"] == "timeout"
    assert r["rollback"] is not None
    pid = sshd_host.hang_pid()
    assert pid is not None
    assert await eventually(lambda: not process_running(pid), 5), f"remote compose (pid {pid}) survived the timeout"
    calls = reads_in_order(sshd_host.calls())
    assert calls[: UP + 1] == [*before_up(sshd_host, "svc-hang"), rollback_argv(sshd_host, "svc-hang")], calls


@pytest.mark.parametrize(
    ("behaviour", "state", "health", "exit_code", "reason", "min_s", "max_s"),
    [
        # May recover, so it waits for timeout_seconds (5).
        ("unhealthy", "running", "unhealthy", None, "did not stay healthy for 2s within 5s", 5, 20),
        # A stopped container will not come back: fail at the first poll, with its exit code.
        ("exited", "exited", "none", 1, "stopped: state=exited, health=none, exit code 1", 0, 4),
    ],
)
async def test_unhealthy_after_up_rolls_back(
    ssh_e2e, sshd_host, behaviour, state, health, exit_code, reason, min_s, max_s
):
    e2e = ssh_e2e
    service = f"svc-{behaviour}"
    write_module(e2e.root, f"e2e-{behaviour}", "h1", service,
                 health={"stable_seconds": 2, "timeout_seconds": 5, "poll_seconds": 1})
    sshd_host.set_behaviour(service, behaviour)
    await e2e.start_worker()

    out = await e2e.outcome(await e2e.start(request(f"e2e-{behaviour}", service)), timeout_s=60)

    assert (out.status, out.error_type, out.result["exitCode"]) == ("unhealthy", "Unhealthy", 4)
    r = out.result
    assert r["remote"]["returncode"] == 0
    assert (r["health"]["state"], r["health"]["health"], r["health"]["exit_code"]) == (state, health, exit_code)
    assert r["rollback"] is not None and reason in r["rollback"]["reason"], r["rollback"]
    assert min_s <= out.seconds < max_s, f"{behaviour}: unhealthy after {out.seconds:.1f} s"
    calls = reads_in_order(sshd_host.calls())
    assert calls[:UP] == before_up(sshd_host, service), calls
    assert rollback_argv(sshd_host, service) in calls, calls
    assert r["rollback"]["image"]["outcome"] == "unhealthy"  # the stand-in's service stays unhealthy
    # Why it failed stays on the host (its last log lines and probe output), and the error says where.
    assert r["error"].endswith(f"; its last log lines are kept on the host: platform-apply logs {out.handle.id}")
    run = (await out.handle.describe()).run_id
    kept = Path(sshd_host.base_dir, "agent-state", "output")
    assert "giving up" in "".join(p.read_text() for p in kept.glob(f"{run}.health.*.stderr.log"))
    assert "stand-in-url-pass" not in json.dumps(r)
    assert json.loads(e2e.status_file(f"e2e-{behaviour}").read_text())["status"] == "unhealthy"
    assert [a["status"] for a in e2e.audit()] == ["unhealthy"]


# ---- secrets ---------------------------------------------------------------


@pytest.mark.parametrize("exit_code", [0, 1], ids=["applied", "remote_failed"])
async def test_no_corpus_secret_a_host_prints_reaches_any_sink(ssh_e2e, sshd_host, exit_code):
    """148 realistic secret shapes, compose's own among them, printed by compose up on
    stdout and stderr: only facts are kept, so none is in history (as the temporal CLI
    shows it), the worker's log or the state files."""
    e2e = ssh_e2e
    corpus = LEAKS + HOST_ONLY
    secrets = [secret for leak in corpus for secret in leak.secrets]
    assert len(corpus) >= 100
    Path(sshd_host.state_dir, "corpus.txt").write_text("\n".join(leak.text for leak in corpus))
    write_module(e2e.root, "e2e-corpus", "h1", "svc-corpus")
    sshd_host.set_behaviour("svc-corpus", f"corpus exit={exit_code}")
    worker = await e2e.start_worker()

    out = await e2e.outcome(await e2e.start(request("e2e-corpus", "svc-corpus")))

    assert out.status == ("applied" if exit_code == 0 else "remote_failed"), out.result
    remote = out.result["remote"]
    assert remote["progress"] == ["Container core-svc-corpus-1 Started"] and remote["output_bytes"] > 10_000
    assert (remote["error_class"] is None) == (exit_code == 0)
    shown = subprocess.run(
        [str(VENV_BIN / "temporal"), "workflow", "show", "-w", out.handle.id, "-o", "json",
         "--address", e2e.server.address],
        capture_output=True, text=True, timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    history = json_text(shown.stdout)
    assert "Container core-svc-corpus-1 Started" in history  # the payloads were decoded and searched
    sinks = {
        "the history": history,
        "the worker's log": worker.log(),
        "the state files": "".join(p.read_text() for p in e2e.state_dir.rglob("*") if p.is_file()),
    }
    for where, text in sinks.items():
        leaked = [secret for secret in secrets if secret in text]
        assert leaked == [], f"{len(leaked)} secrets in {where}: {leaked[:5]}"


# ---- trust and reachability --------------------------------------------------


# A closed port: tests/transport/test_ssh.py::test_closed_port_fails_fast (a retryable
# ConnectFailed at once) and tests/workflows/test_apply.py::test_unreachable_host_is_retried_then_remote_failed.
@pytest.mark.parametrize("fault", ["wrong_host_key", "wrong_client_key"])
async def test_untrusted_host_runs_nothing(ssh_e2e, sshd_host, tmp_path, fault):
    e2e = ssh_e2e
    entry = ssh_host_entry(sshd_host)
    if fault == "wrong_host_key":
        entry["known_hosts"] = wrong_host_key_line(sshd_host, tmp_path)
        expected = "did not present the pinned host key"
    elif fault == "wrong_client_key":
        make_keypair(tmp_path / "stranger_key", "not-authorized")
        entry["client_key"] = str(tmp_path / "stranger_key")
        expected = "refused the client key"
    write_hosts(e2e.root, {"h1": entry})
    write_module(e2e.root, "e2e-trust", "h1", "svc-trust")
    await e2e.start_worker()
    attempts_before = connection_attempts(sshd_host)

    out = await e2e.outcome(await e2e.start(request("e2e-trust", "svc-trust")), timeout_s=90)

    assert (out.status, out.error_type, out.result["exitCode"]) == ("remote_failed", "RemoteFailed", 4)
    assert expected in out.result["error"], out.result["error"]
    # The first remote step (the checkout check) fails: compose up never ran, so nothing to roll back.
    assert out.result["remote"] is None and out.result["rollback"] is None
    assert out.seconds < 60, f"took {out.seconds:.1f} s"
    assert sshd_host.calls() == []
    assert sshd_host.connection_count() == 0
    assert await activity_attempts(out.handle, "compose_up") == []
    # A wrong key is final: the two reads made side by side (the checkout, the images)
    # share one connect attempt when the second waits on the first's, or make one each;
    # one activity attempt each, no retry.
    assert connection_attempts(sshd_host) - attempts_before in (1, 2)
    assert await activity_attempts(out.handle, "verify_checkout") == [1]
    assert await activity_attempts(out.handle, "compose_images") == [1]
    assert out.seconds < 10, f"took {out.seconds:.1f} s: was it retried?"


# ---- the worker dies or stops mid-apply --------------------------------------


# kill -9 mid compose up and mid rollback, then a new worker: the `up` and
# `rollback` cases of tests/chaos/test_worker_kill.py (attempt 2 finishes, one
# audit line, the status file, no overlapping compose runs).


async def test_sigterm_during_compose_up_lets_it_finish_and_a_new_worker_continues(ssh_e2e, sshd_host):
    """Graceful shutdown: the running compose up completes (it is not cut off
    and not run again); the next worker picks the apply up from there."""
    e2e = ssh_e2e
    write_module(e2e.root, "e2e-term", "h1", "svc-term")
    sshd_host.set_behaviour("svc-term", "slow")  # compose up takes ~1 s
    first = await e2e.start_worker()
    handle = await e2e.start(request("e2e-term", "svc-term"))
    up = compose_up_argv(sshd_host, "svc-term")

    assert await eventually(lambda: up in sshd_host.calls(), 20), "compose up never started"
    code, seconds = await first.terminate()
    assert code == 0, f"exit {code} after {seconds:.1f} s:\n{first.log()}"
    assert seconds >= 0.5, "the worker did not wait for the running compose up"
    await e2e.start_worker()
    out = await e2e.outcome(handle, timeout_s=60)

    assert out.status == "applied", out.result
    assert out.result["remote"]["returncode"] == 0
    assert await activity_attempts(handle, "compose_up") == [1]
    assert sshd_host.calls().count(up) == 1


async def test_parallel_applies_on_two_hosts_use_one_connection_each(e2e, sshd_host, sshd_host2):
    write_hosts(e2e.root, {"h1": ssh_host_entry(sshd_host), "h2": ssh_host_entry(sshd_host2)})
    write_module(e2e.root, "e2e-par-a", "h1", "svc-a")
    write_module(e2e.root, "e2e-par-b", "h2", "svc-b")
    await e2e.start_worker()

    handles = [await e2e.start(request("e2e-par-a", "svc-a")), await e2e.start(request("e2e-par-b", "svc-b"))]
    started = time.monotonic()
    a, b = await asyncio.gather(*(e2e.outcome(h) for h in handles))
    elapsed = time.monotonic() - started

    assert (a.status, a.result["host"], b.status, b.result["host"]) == ("applied", "h1", "applied", "h2")
    assert runless(a.result["command"]) == f"platform-agent apply RUN 300 {sshd_host.compose_path} svc-a {SHA} --lease"
    assert runless(b.result["command"]) == f"platform-agent apply RUN 300 {sshd_host2.compose_path} svc-b {SHA} --lease"
    only_up_then_ps(sshd_host, "svc-a", min_ps=3)
    only_up_then_ps(sshd_host2, "svc-b", min_ps=3)
    assert sshd_host.connection_count() == 1 and sshd_host2.connection_count() == 1
    # In parallel, not one after the other (each alone needs >= the 2 s stable window).
    assert elapsed < 2 * (FAST_HEALTH["stable_seconds"] + 1) + 2, f"{elapsed:.1f} s"
    for module, host in (("e2e-par-a", "h1"), ("e2e-par-b", "h2")):
        status = json.loads(e2e.status_file(module).read_text())
        assert (status["status"], status["host"]) == ("applied", host)
