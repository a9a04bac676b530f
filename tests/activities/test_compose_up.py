"""compose_up's last word before a host changes: with a signing key, the approval must be
signed and name this apply's plan, whatever the workflow scheduled."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.compose_up import ComposeUp
from activities.single_flight import SingleFlight
from platformctl.models import Approval, ComposeUpInput
from platformctl.policy.approval import sign
from platformctl.policy.plan import plan_digest
from platformctl.target import derive_target
from platformctl.transport import RemoteOutput
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
        return RemoteOutput(returncode=0, stdout="", stderr="", duration_s=0.1)


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
    up = ComposeUp(StubDeps(settings, transport), SingleFlight()).compose_up  # type: ignore[arg-type]
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
