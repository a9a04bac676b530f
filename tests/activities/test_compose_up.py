"""compose_up's last word before a host changes: with a signing key, the approval must be
signed and name this apply's plan, whatever the workflow scheduled."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities import host_agent, remote_steps
from activities.remote_steps import RemoteSteps
from platformctl.models import Action, Approval, ComposeUpInput
from platformctl.policy.approval import sign
from platformctl.policy.plan import plan_digest
from platformctl.target import derive_target
from platformctl.transport import RemoteOutput
from platformctl.transport.fake import agent_answer
from tests.activities.state_helpers import StubDeps, settings_for
from tests.activities.test_single_flight import attempt
from tests.platform_files import SHA, plan, write_platform

KEY = b"a-test-approval-key-of-32-bytes!"
DIGEST = plan_digest(plan())


class CountingTransport:
    def __init__(self) -> None:
        self.runs = 0

    async def run(self, host: Any, command: Any, *, timeout_s: float) -> RemoteOutput:
        self.runs += 1
        return agent_answer(command, RemoteOutput(returncode=0, stdout="", stderr="", duration_s=0.1))


def signed(digest: str | None) -> Approval:
    approval = Approval(approved_sha=SHA, approved_pr=165, approved_by="ci", plan_digest=digest)
    return approval.model_copy(update={"signature": sign(KEY, "honcho-redis", approval)})


@pytest.mark.parametrize(
    "approval, runs",
    [(signed(DIGEST), 1), (signed(plan_digest(plan(changes=[]))), 0), (signed(None), 0)],
    ids=["this-plan", "another-plan", "no-plan"],
)
async def test_compose_up_runs_only_for_an_approval_of_this_plan(tmp_path, approval, runs):
    (tmp_path / "approval.key").write_bytes(KEY)
    settings = dataclasses.replace(settings_for(tmp_path), approval_key_file=tmp_path / "approval.key")
    write_platform(settings.platform_root)
    transport = CountingTransport()
    up = RemoteSteps(StubDeps(settings, transport)).compose_up  # type: ignore[arg-type]
    inp = ComposeUpInput(
        target=derive_target(settings, "honcho-redis"), timeout_seconds=60, module="honcho-redis", source_sha=SHA,
        approval=approval, plan_digest=DIGEST,
    )
    if runs:
        assert (await attempt(1).run(up, inp)).executed
    else:
        with pytest.raises(ApplicationError) as refused:
            await attempt(1).run(up, inp)
        assert refused.value.type == "ApprovalMismatch"
    assert transport.runs == runs


class AgentTransport:
    """Answers each command with the next of `answers` (a dict is the agent's JSON for
    this run, verb `apply` unless it says; a RemoteOutput is passed on as it is)."""

    def __init__(self, *answers: dict[str, Any] | RemoteOutput) -> None:
        self.answers = list(answers)
        self.sent: list[Any] = []

    async def run(self, host: Any, command: Any, *, timeout_s: float) -> RemoteOutput:
        self.sent.append(command)
        answer = self.answers.pop(0)
        if isinstance(answer, RemoteOutput):
            return answer
        body = {"agent": 3, "verb": "apply", "run": command.argv[2] if len(command.argv) > 2 else None, **answer}
        return RemoteOutput(returncode=0, stdout=json.dumps(body), stderr="", duration_s=0.1)


async def run_up(
    tmp_path: Path, transport: AgentTransport, poll_seconds: int | None = None, action: Action = "update"
) -> Any:
    settings = settings_for(tmp_path)
    write_platform(settings.platform_root)
    up = RemoteSteps(StubDeps(settings, transport)).compose_up  # type: ignore[arg-type]
    inp = ComposeUpInput(
        target=derive_target(settings, "honcho-redis"), timeout_seconds=60, module="honcho-redis", source_sha=SHA,
        approval=Approval(approved_sha=SHA), poll_seconds=poll_seconds, action=action,
    )
    return await attempt(1).run(up, inp)


RAN = {"answer": "ran", "returncode": 0, "duration_s": 1.5, "progress": ["Container core-redis-1 Started", "x y"],
       "output_bytes": 10, "output_sha256": "0" * 64}


async def test_a_busy_project_is_asked_again_until_the_agent_has_the_outcome(tmp_path, monkeypatch):
    monkeypatch.setattr(host_agent, "BUSY_POLL_S", 0.01)
    transport = AgentTransport({"answer": "busy", "holder": "0" * 8 + "-0000-4000-8000-" + "0" * 12, "expires_in": 3},
                               {**RAN, "replayed": True})
    result = await run_up(tmp_path, transport)
    assert result.remote.returncode == 0 and result.remote.progress == ["Container core-redis-1 Started"]
    assert len(transport.sent) == 2 and transport.sent[0] == transport.sent[1]  # the same run, asked again


async def test_a_project_still_busy_at_the_bound_ends_the_apply_blocked_with_nothing_run(tmp_path, monkeypatch):
    """The contract: a waiting apply fails as `blocked` after a bounded wait."""
    monkeypatch.setattr(host_agent, "BUSY_POLL_S", 0.01)
    monkeypatch.setattr(remote_steps, "AGENT_MARGIN_S", -59)  # the bound: the up timeout (60 s) - 59 s
    holder = "0" * 8 + "-0000-4000-8000-" + "0" * 12
    transport = AgentTransport(*[{"answer": "busy", "holder": holder, "expires_in": 500}] * 1000)
    with pytest.raises(ApplicationError) as failed:
        await run_up(tmp_path, transport)
    assert (failed.value.type, failed.value.non_retryable) == ("PolicyViolation", True)
    assert f"busy on the host (held by run {holder}, its lease expiring in 500 s); nothing ran" in failed.value.message
    assert 10 < len(transport.sent) < 1000


@pytest.mark.parametrize(
    "answer, error_type, words",
    [
        ({"answer": "interrupted"}, "RemoteFailed", "never run twice"),
        ({"answer": "run_conflict"}, "PolicyViolation", "another request"),
        ({"answer": "refused", "reason": "checkout", "head": "b" * 40, "dirty": False}, "PolicyViolation",
         "holds commit " + "b" * 40),
        ({"answer": "refused", "reason": "checkout", "head": SHA, "dirty": True}, "PolicyViolation", "local changes"),
        ({"answer": "refused", "reason": "host_storage"}, "RemoteFailed", "nothing ran"),
        ({"answer": "ran", "returncode": 0, "progress": "not a list"}, "RemoteFailed", "not the facts"),
        (RemoteOutput(returncode=126, stdout="", stderr="platform-gate: command not allowed", duration_s=0.1),
         "PolicyViolation", "older than v3"),
        (RemoteOutput(returncode=127, stdout="", stderr="sh: platform-agent: not found", duration_s=0.1),
         "PolicyViolation", "no host agent"),
    ],
    ids=["interrupted", "run-conflict", "another-commit", "local-edit", "host-storage", "unreadable", "old-gate",
         "no-gate"],
)
async def test_what_the_agent_says_ends_the_apply_with_its_reason_and_no_retry(tmp_path, answer, error_type, words):
    transport = AgentTransport(answer)
    with pytest.raises(ApplicationError) as failed:
        await run_up(tmp_path, transport)
    assert failed.value.type == error_type and failed.value.non_retryable, failed.value
    assert words in failed.value.message and "not allowed" not in failed.value.message


@pytest.mark.parametrize(("poll_s", "applied"), [(200, True), (201, False)])
async def test_a_health_poll_longer_than_a_third_of_the_hosts_lease_ttl_is_blocked_before_compose_up(
    tmp_path, poll_s, applied
):
    """Each poll renews the lease: one that may lapse between two polls would restart the
    stable window at every poll, so the apply is refused before anything runs."""
    check = {"verb": "check", "answer": "checked", "lease_ttl": 600, "leases": []}
    transport = AgentTransport(check, RAN)
    if applied:
        assert (await run_up(tmp_path, transport, poll_s)).remote.returncode == 0
        assert [c.argv[1] for c in transport.sent] == ["check", "apply"]
        return
    with pytest.raises(ApplicationError) as refused:
        await run_up(tmp_path, transport, poll_s)
    assert (refused.value.type, refused.value.non_retryable) == ("PolicyViolation", True)
    assert refused.value.message == (
        "rs2000: health.poll_seconds 201 is more than a third of the host's lease TTL (600 s), which each poll "
        "renews: lower it to 200 or raise the gate's --lease-ttl; nothing ran"
    )
    assert [c.argv[1] for c in transport.sent] == ["check"]  # apply never sent


@pytest.mark.parametrize("action", ["recreate", "restart"])
async def test_a_gate_older_than_v5_refusing_the_action_is_blocked_naming_the_upgrade(tmp_path, action):
    refused = RemoteOutput(returncode=126, stdout="", stderr="platform-gate: command not allowed", duration_s=0.1)
    transport = AgentTransport(refused)
    with pytest.raises(ApplicationError) as failed:
        await run_up(tmp_path, transport, action=action)
    assert (failed.value.type, failed.value.non_retryable) == ("PolicyViolation", True)
    assert failed.value.message == (
        f"rs2000: host agent older than v5 (the gate refused `apply --action {action}`, the plan's action): "
        "install host/ on the host (docs/upgrade.md); nothing ran"
    )
    assert [c.argv[-3:] for c in transport.sent] == [("--lease", "--action", action)]


@pytest.mark.parametrize("action, tail", [("create", ()), ("update", ()), ("recreate", ("--action", "recreate")),
                                          ("restart", ("--action", "restart"))])
async def test_the_plans_action_travels_as_the_apply_flag_and_create_update_send_none(tmp_path, action, tail):
    transport = AgentTransport(RAN)
    assert (await run_up(tmp_path, transport, action=action)).executed
    (sent,) = transport.sent
    assert sent.argv[:2] == ("platform-agent", "apply") and sent.argv[7:] == ("--lease", *tail)


async def test_remove_is_refused_before_anything_reaches_the_host(tmp_path):
    transport = AgentTransport()
    with pytest.raises(ApplicationError) as failed:
        await run_up(tmp_path, transport, action="remove")
    assert (failed.value.type, failed.value.message) == (
        "PolicyViolation", "remove is not supported by this worker yet; nothing ran"
    )
    assert transport.sent == []
