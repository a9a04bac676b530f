"""The health poll and the apply's own rollback through the host agent: what each
answer becomes, and what a host whose gate predates a verb is asked instead."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.remote_steps import RemoteSteps
from platformctl.models import Approval, ComposePsInput, RollbackImagesInput
from platformctl.target import derive_target
from platformctl.transport import RemoteOutput
from tests.activities.state_helpers import StubDeps, settings_for
from tests.activities.test_compose_up import AgentTransport
from tests.activities.test_single_flight import attempt
from tests.platform_files import write_platform

OTHER_RUN = "0" * 8 + "-0000-4000-8000-" + "0" * 12
IMAGE = "sha256:" + "a" * 64
REFUSED = RemoteOutput(returncode=126, stdout="", stderr="platform-gate: command not allowed", duration_s=0.1)


def container(state: str = "running", health: str = "healthy", exit_code: int | None = None, restarts: int = 0):
    return {"state": state, "health": health, "exit_code": exit_code, "restart_count": restarts}


async def poll(tmp_path, transport: AgentTransport) -> Any:
    settings = settings_for(tmp_path)
    write_platform(settings.platform_root)
    ps = RemoteSteps(StubDeps(settings, transport)).compose_ps  # type: ignore[arg-type]
    inp = ComposePsInput(target=derive_target(settings, "honcho-redis"), module="honcho-redis")
    return await attempt(1).run(ps, inp)


@pytest.mark.parametrize(
    "answer, expected",
    [
        ({"answer": "observed", "lease": "held", "containers": [container(), container("exited", "", 3, 2)]},
         {"state": "exited", "exit_code": 3, "restart_count": 2, "retaken": False, "lease_lost_to": None}),
        ({"answer": "observed", "lease": "retaken", "containers": [container(restarts=1), container(restarts=4)]},
         {"state": "running", "restart_count": 5, "retaken": True}),
        ({"answer": "lease_lost", "holder": OTHER_RUN}, {"state": "", "lease_lost_to": OTHER_RUN}),
        ({"answer": "busy", "holder": OTHER_RUN, "expires_in": 30}, {"state": "", "lease_lost_to": None}),
        ({"answer": "unobserved", "lease": "held"},
         {"state": "", "error": "the host agent could not look (unobserved)"}),
    ],
    ids=["least-healthy-of-all", "retaken-restarts-summed", "lease-lost", "busy-is-no-verdict", "unobserved"],
)
async def test_a_health_answer_becomes_one_observation(tmp_path, answer, expected):
    transport = AgentTransport({**answer, "verb": "health"})
    seen = (await poll(tmp_path, transport)).model_dump()
    assert {k: seen[k] for k in expected} == expected
    assert transport.sent[0].argv[:2] == ("platform-agent", "health")


async def test_a_gate_from_before_health_is_asked_with_compose_ps(tmp_path):
    row = '{"Service": "honcho-redis", "State": "exited", "Health": "", "ExitCode": 1}\n'
    transport = AgentTransport(REFUSED, RemoteOutput(returncode=0, stdout=row, stderr="", duration_s=0.1))
    seen = await poll(tmp_path, transport)
    assert (seen.state, seen.exit_code, seen.restart_count) == ("exited", 1, None)
    assert transport.sent[1].argv[:2] == ("docker", "compose") and "--all" in transport.sent[1].argv


async def roll_back(tmp_path, transport: AgentTransport, approval: Approval | None = None) -> Any:
    settings = settings_for(tmp_path)
    write_platform(settings.platform_root)
    rollback = RemoteSteps(StubDeps(settings, transport)).compose_rollback  # type: ignore[arg-type]
    inp = RollbackImagesInput(
        target=derive_target(settings, "honcho-redis"), module="honcho-redis", image_id=IMAGE, timeout_seconds=60,
        approval=approval,
    )
    return await attempt(1).run(rollback, inp)


async def test_an_applys_rollback_asks_the_agent_for_the_image_it_recorded(tmp_path):
    transport = AgentTransport({"verb": "rollback", "answer": "ran", "returncode": 0, "image_id": IMAGE})
    result = await roll_back(tmp_path, transport)
    assert result.remote.returncode == 0
    [sent] = transport.sent
    assert sent.argv[:2] == ("platform-agent", "rollback") and sent.stdin is None  # no image ID leaves here


@pytest.mark.parametrize(
    "answer, error_type, words",
    [
        ({"answer": "lease_lost", "holder": OTHER_RUN}, "RemoteFailed", f"lease lost to run {OTHER_RUN}"),
        ({"answer": "refused", "reason": "undefined_service"}, "PolicyViolation", "does not define the service"),
        ({"answer": "refused", "reason": "no_snapshot"}, "PolicyViolation", "no one image"),
        ({"answer": "interrupted"}, "RemoteFailed", "never run twice"),
    ],
    ids=["lease-lost", "undefined-service", "no-snapshot", "interrupted"],
)
async def test_a_refused_rollback_says_why_and_is_not_retried(tmp_path, answer, error_type, words):
    with pytest.raises(ApplicationError) as failed:
        await roll_back(tmp_path, AgentTransport({**answer, "verb": "rollback"}))
    assert (failed.value.type, failed.value.non_retryable) == (error_type, True), failed.value
    assert words in failed.value.message


async def test_an_older_agent_and_an_operators_rollback_pin_by_id(tmp_path):
    transport = AgentTransport(REFUSED, RemoteOutput(returncode=0, stdout="", stderr="", duration_s=0.1))
    assert (await roll_back(tmp_path, transport)).remote.returncode == 0
    assert [c.argv[0] for c in transport.sent] == ["platform-agent", "docker"] and transport.sent[1].stdin
    operator = AgentTransport(RemoteOutput(returncode=0, stdout="", stderr="", duration_s=0.1))
    await roll_back(tmp_path, operator, Approval(approved_sha="a" * 40, approved_by="alice"))
    assert [c.argv[0] for c in operator.sent] == ["docker"]


async def test_release_frees_this_runs_lease_and_an_older_agent_has_none(tmp_path):
    settings = settings_for(tmp_path)
    write_platform(settings.platform_root)
    inp = ComposePsInput(target=derive_target(settings, "honcho-redis"), module="honcho-redis")
    for transport, freed in ((AgentTransport({"verb": "release", "answer": "released", "released": 1}), 1),
                             (AgentTransport(REFUSED), 0)):
        release = RemoteSteps(StubDeps(settings, transport)).release_lease  # type: ignore[arg-type]
        assert await attempt(1).run(release, inp) == freed
        assert transport.sent[0].argv[:2] == ("platform-agent", "release")


async def test_a_rollback_for_a_run_that_never_ran_compose_up_here_is_skipped(tmp_path):
    """compose up refused before anything ran (busy, checkout, compose config, storage)."""
    refused = {"verb": "rollback", "answer": "refused", "reason": "not_applied"}
    result = await roll_back(tmp_path, AgentTransport(refused))
    assert result.executed is False
