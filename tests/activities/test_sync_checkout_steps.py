"""sync_checkout on the worker's side: hosts.yaml's opt-in becomes `apply ... --sync` (built in
platformctl/commands.py), never for a re-apply's child, and each refusal of the agent's ends
the apply with its own reason, nothing run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.remote_steps import RemoteSteps
from platformctl.config import load_hosts
from platformctl.models import Approval, ComposeUpInput, VerifyCheckoutInput
from platformctl.outcomes import ToolError
from platformctl.target import derive_target
from platformctl.transport import RemoteOutput
from tests.activities.state_helpers import StubDeps, settings_for
from tests.activities.test_compose_up import RAN, AgentTransport
from tests.activities.test_single_flight import attempt
from tests.platform_files import SHA, host_doc, write_platform


def steps(tmp_path: Path, transport: Any, **host: Any) -> tuple[RemoteSteps, Any]:
    settings = settings_for(tmp_path)
    write_platform(settings.platform_root, hosts={"rs2000": host_doc(settings.platform_root, **host)})
    return RemoteSteps(StubDeps(settings, transport)), derive_target(settings, "honcho-redis")  # type: ignore[arg-type]


def as_workflow(workflow_id: str) -> Any:
    env = attempt(1)
    env.info = dataclasses.replace(env.info, workflow_id=workflow_id)
    return env


async def up(tmp_path: Path, transport: Any, workflow_id: str = "apply-1", reapply: bool = False, **host: Any) -> Any:
    remote, target = steps(tmp_path, transport, **host)
    inp = ComposeUpInput(target=target, timeout_seconds=60, module="honcho-redis", source_sha=SHA,
                         approval=Approval(approved_sha=SHA), reapply=reapply)  # fmt: skip
    return await as_workflow(workflow_id).run(remote.compose_up, inp)


@pytest.mark.parametrize(
    "sync_checkout, reapply, sent",
    [(True, False, True), (False, False, False), (True, True, False)],
    ids=["opted-in", "not-opted-in", "re-apply"],
)
async def test_sync_is_asked_only_for_a_host_that_opted_in_and_never_by_a_re_apply(
    tmp_path, sync_checkout, reapply, sent
):
    transport = AgentTransport(RAN, RemoteOutput(returncode=0, stdout=SHA + "\n", stderr="", duration_s=0.1))
    # The workflow id says nothing: a re-apply's child is told so by its workflow (it has a parent).
    workflow_id = "reapply-honcho-redis-0123" if not reapply else "apply-honcho-redis-0123"
    await up(tmp_path, transport, workflow_id, reapply=reapply, sync_checkout=sync_checkout)
    [command] = transport.sent
    assert command.argv[-2:] == (("--lease", "--sync") if sent else (SHA, "--lease"))
    # Before compose up: the worker's own read of HEAD is skipped where the agent syncs first.
    remote, target = steps(tmp_path, transport, sync_checkout=sync_checkout)
    await as_workflow(workflow_id).run(
        remote.verify_checkout,
        VerifyCheckoutInput(target=target, approved_sha=SHA, module="honcho-redis", reapply=reapply),
    )
    assert len(transport.sent) == (1 if sent else 2)


@pytest.mark.parametrize(
    "answer, error_type, message",
    [
        ({"answer": "refused", "reason": "sync_not_allowed"}, "PolicyViolation",
         "rs2000: hosts.yaml sets sync_checkout, but the host does not allow it (its deploy key's forced command "
         "has no --allow-sync: run host/install --allow-sync there, or sync by hand, see docs/security.md); "
         "nothing ran"),
        ({"answer": "refused", "reason": "sync_dirty"}, "PolicyViolation",
         "rs2000:/opt/platform has local edits to tracked files: not synced to the approved commit, the edits "
         "left as they are; nothing ran"),
        ({"answer": "refused", "reason": "sync_unreachable", "fetched": True}, "PolicyViolation",
         "rs2000: the approved commit is not reachable in /opt/platform: `git fetch` succeeded, but no branch it "
         "fetches holds it (push it to one); nothing ran"),
        ({"answer": "refused", "reason": "sync_unreachable", "fetched": False}, "PolicyViolation",
         "rs2000: the approved commit is not reachable in /opt/platform: `git fetch` from the checkout's remote "
         "failed (its output: platform-apply logs); nothing ran"),
        ({"answer": "refused", "reason": "sync_failed"}, "RemoteFailed",
         "rs2000: git could not read or check out /opt/platform (not a git checkout the deploy user may change, "
         "or untracked files in the way: platform-apply logs); nothing ran"),
        (RemoteOutput(returncode=126, stdout="", stderr="platform-gate: command not allowed", duration_s=0.1),
         "PolicyViolation",
         "rs2000: host agent older than v4 (the gate refused `apply --sync`, asked for sync_checkout): install "
         "host/ on the host (host/install --allow-sync, docs/security.md); nothing ran"),
    ],
    ids=["not-allowed", "dirty", "unreachable", "fetch-failed", "git-failed", "older-gate"],
)
async def test_each_refusal_of_a_sync_ends_the_apply_with_its_reason(tmp_path, answer, error_type, message):
    with pytest.raises(ApplicationError) as refused:
        await up(tmp_path, AgentTransport(answer), sync_checkout=True)
    assert (refused.value.type, refused.value.non_retryable) == (error_type, True)
    assert refused.value.message == message


async def test_a_checkout_busy_with_another_apply_is_asked_again_then_blocked(tmp_path, monkeypatch):
    from activities import host_agent, remote_steps

    monkeypatch.setattr(host_agent, "BUSY_POLL_S", 0.01)
    monkeypatch.setattr(remote_steps, "AGENT_MARGIN_S", -59)
    monkeypatch.setattr(remote_steps.commands, "SYNC_FETCH_TIMEOUT_S", 0)
    busy = {"answer": "busy", "holder": None, "expires_in": None, "busy_with": "checkout"}
    with pytest.raises(ApplicationError) as refused:
        await up(tmp_path, AgentTransport(*[busy] * 1000), sync_checkout=True)
    assert refused.value.message == (
        "rs2000: the checkout /opt/platform is busy on the host (another apply syncs it, or runs compose up from it "
        "while this one would sync it); nothing ran"
    )


def test_hosts_yaml_sync_checkout_is_a_strict_opt_in(tmp_path):
    write_platform(tmp_path, hosts={
        "plain": host_doc(tmp_path), "synced": host_doc(tmp_path, sync_checkout=True),
    })  # fmt: skip
    hosts = load_hosts(tmp_path)
    assert (hosts["plain"].sync_checkout, hosts["synced"].sync_checkout) == (False, True)
    for bad, words in [({"sync_checkout": "yes"}, "sync_checkout"),
                       ({"sync_checkout": True, "verify_checkout": False}, "sync_checkout needs verify_checkout")]:
        write_platform(tmp_path, hosts={"h": host_doc(tmp_path, **bad)})
        with pytest.raises(ToolError) as invalid:
            load_hosts(tmp_path)
        assert words in str(invalid.value), invalid.value
