"""Image rollback over the fake transport: every branch of the rollback step.

A failure after compose up started puts the service back on the image the
snapshot saw before compose up (policy `image`, the default), watches its
health again, and records what it did; the apply's own status stays the
failure it was.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.worker import Replayer

import activities.single_flight as single_flight
from activities.base import heartbeating
from platformctl.client import DATA_CONVERTER
from platformctl.models import ModuleState
from platformctl.module_state import module_state_id
from platformctl.state import read_status
from platformctl.transport import RemoteOutput
from platformctl.transport.fake import FakeTransport, empty_images, failed, hang, images, ok, ps, runless
from tests.conftest import Harness
from tests.platform_files import OTHER_SHA, SHA, apply_input, approval, module_doc, plan, write_platform
from tests.workflows.conftest import FAST_HEALTH
from workflows.registry import ALL_WORKFLOWS

OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64
FAST = {"stable_seconds": 10, "timeout_seconds": 60, "poll_seconds": 5}
# The agent pins the image it recorded before this run's compose up: no ID is sent.
ROLLBACK_COMMAND = "platform-agent rollback RUN 300 /opt/platform/compose/core/compose.yaml honcho-redis"


def kinds(transport: FakeTransport) -> list[str]:
    return [c.kind for _, c in transport.calls]


def health_by_image(transport: FakeTransport, new: str, old: str) -> Callable[[float], Awaitable[RemoteOutput]]:
    """compose ps answers `new` health until the rollback ran, then `old`."""

    async def answer(timeout_s: float) -> RemoteOutput:
        rolled_back = "compose_rollback" in kinds(transport)
        return ps("honcho-redis", "running", old if rolled_back else new)

    return answer


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never held")


def audit_lines(harness) -> list[dict]:
    return [json.loads(line) for line in (harness.settings.state_dir / "audit.jsonl").read_text().splitlines()]


@pytest.fixture
def harness(harness):
    write_platform(harness.root, modules=[module_doc(health=FAST)])
    harness.transport.script = {
        "compose_images": [images("honcho-redis", OLD), images("honcho-redis", NEW)],
        "compose_ps": [health_by_image(harness.transport, "unhealthy", "healthy")],
    }
    return harness


async def test_an_unhealthy_apply_goes_back_to_the_image_it_ran_before(harness):
    out = await harness.apply(apply_input())

    assert (out.status, out.result["exitCode"], out.error_type) == ("unhealthy", 4, "Unhealthy")
    assert sorted(kinds(harness.transport)[:2]) == ["compose_images", "git_head"]  # read side by side
    assert kinds(harness.transport)[2:4] == ["agent_check", "compose_up"]
    [(_, rollback)] = [(h, c) for h, c in harness.transport.calls if c.kind == "compose_rollback"]
    assert runless(rollback.render()) == ROLLBACK_COMMAND and rollback.stdin is None
    assert kinds(harness.transport)[-2:] == ["compose_ps", "agent_release"]  # watched after the rollback, then freed
    image = out.result["rollback"]["image"]
    assert (image["outcome"], image["image_id"], image["healthy"]) == ("restored", OLD, True)
    assert out.result["rollback"]["action"] == "image"
    assert out.result["snapshot"]["images"][0]["image_id"] == OLD
    # The failure's health stays what the apply saw, not the rollback's.
    assert out.result["health"]["health"] == "unhealthy"
    status = read_status(harness.settings.state_dir, "honcho-redis")
    assert status.last_failure.rollback.image.outcome == "restored"
    assert status.last_failure.snapshot[0].image_id == OLD
    assert audit_lines(harness)[-1]["rollback"]["image"]["image_id"] == OLD


async def test_a_healthy_apply_records_the_images_before_and_after(harness):
    harness.transport.script["compose_ps"] = [ps("honcho-redis")]
    out = await harness.apply(apply_input())
    assert out.status == "applied"
    assert [i["image_id"] for i in out.result["snapshot"]["images"]] == [OLD]
    assert [i["image_id"] for i in out.result["images"]["images"]] == [NEW]
    status = read_status(harness.settings.state_dir, "honcho-redis")
    assert [i.image_id for i in status.images] == [NEW] and [i.image_id for i in status.images_before] == [OLD]
    assert "compose_rollback" not in kinds(harness.transport)


async def test_a_rollback_that_stays_unhealthy_is_reported_loudly(harness, caplog):
    harness.transport.script["compose_ps"] = [ps("honcho-redis", "running", "unhealthy")]
    out = await harness.apply(apply_input())
    assert (out.status, out.result["exitCode"]) == ("unhealthy", 4)
    image = out.result["rollback"]["image"]
    assert (image["outcome"], image["image_id"], image["healthy"]) == ("unhealthy", OLD, False)
    assert kinds(harness.transport).count("compose_rollback") == 1  # not retried in a loop
    assert any("ROLLBACK FAILED" in r.getMessage() for r in caplog.records)
    status = read_status(harness.settings.state_dir, "honcho-redis")
    assert status.last_failure.rollback.image.outcome == "unhealthy"


async def test_a_rollback_command_that_fails_is_reported_and_not_retried(harness, caplog):
    harness.transport.script["compose_rollback"] = [failed(1, "Error: No such image: " + OLD)]
    out = await harness.apply(apply_input())
    assert (out.status, out.result["exitCode"]) == ("unhealthy", 4)
    image = out.result["rollback"]["image"]
    assert (image["outcome"], image["image_id"]) == ("failed", OLD)
    assert image["remote"]["error_class"] == "image"
    assert kinds(harness.transport).count("compose_rollback") == 1
    assert any("ROLLBACK FAILED" in r.getMessage() for r in caplog.records)


async def test_a_service_that_ran_nothing_before_has_nothing_to_go_back_to(harness):
    harness.transport.script["compose_images"] = [empty_images()]
    out = await harness.apply(apply_input())
    assert out.status == "unhealthy"
    image = out.result["rollback"]["image"]
    assert image["outcome"] == "skipped" and "no container" in image["error"]
    assert out.result["snapshot"] == {"images": []}
    assert "compose_rollback" not in kinds(harness.transport)


@pytest.mark.parametrize("where", ["module", "policy"])
async def test_policy_record_keeps_the_service_as_it_is(harness, where):
    if where == "module":
        doc = module_doc(health=FAST)
        doc["spec"]["rollback"] = "record"
        write_platform(harness.root, modules=[doc])
    else:
        write_platform(harness.root, modules=[module_doc(health=FAST)], policy={"rollback": "record"})
    out = await harness.apply(apply_input())
    assert out.status == "unhealthy"
    assert out.result["rollback"]["action"] == "record" and out.result["rollback"]["image"] is None
    assert "compose_rollback" not in kinds(harness.transport)


async def test_a_module_setting_overrides_the_policy_default(harness):
    doc = module_doc(health=FAST)
    doc["spec"]["rollback"] = "image"
    write_platform(harness.root, modules=[doc], policy={"rollback": "record"})
    out = await harness.apply(apply_input())
    assert out.result["rollback"]["image"]["outcome"] == "restored"


async def test_a_failed_compose_up_rolls_back_too(harness):
    harness.transport.script["compose_up"] = [failed(1, "pull access denied")]
    out = await harness.apply(apply_input())
    assert (out.status, out.result["exitCode"]) == ("remote_failed", 4)
    assert out.result["rollback"]["image"]["outcome"] == "restored"


@pytest.mark.parametrize(
    "listing, why",
    [(images("honcho-redis", "sha256:abc"), "image ID that is not"), (ok("[" * 100_000), "not JSON")],
    ids=["not-a-full-id", "nested-past-the-recursion-limit"],
)
async def test_a_listing_that_cannot_be_read_stops_the_apply_before_compose_up(harness, listing, why):
    harness.transport.script["compose_images"] = [listing]
    out = await harness.apply(apply_input())
    assert (out.status, out.result["exitCode"]) == ("remote_failed", 4) and why in out.result["error"]
    assert "compose_up" not in kinds(harness.transport)
    assert out.result["rollback"] is None


async def test_a_cancel_after_compose_up_rolls_back_to_the_snapshot(harness):
    harness.transport.script["compose_ps"] = [health_by_image(harness.transport, "starting", "healthy")]
    async with harness.worker():
        handle = await harness.start(apply_input())
        await until(lambda: "compose_ps" in kinds(harness.transport))
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    assert kinds(harness.transport).count("compose_rollback") == 1
    [line] = audit_lines(harness)
    assert (line["status"], line["exitCode"]) == ("cancelled", 5)
    assert line["rollback"]["image"]["outcome"] == "restored"


async def test_a_cancel_whose_attempt_then_times_out_ends_compose_up_before_the_rollback(
    dev_env, tmp_path, monkeypatch
):
    # The real server does not retry an attempt it times out after a cancel request
    # (the time-skipping one never ends it), so the workflow rolls back at once while
    # the attempt's compose up still runs on this worker, waiting to be taken over.
    # The rollback's step ends that wait first; on a host, the gate then holds the
    # rollback until the agent's compose up is done (tests/host/test_platform_agent.py).
    monkeypatch.setattr(single_flight, "heartbeating", functools.partial(heartbeating, 3600.0))  # one, then none
    write_platform(tmp_path, modules=[module_doc(health=FAST_HEALTH)])
    harness = Harness(client=dev_env.client, root=tmp_path, heartbeat_timeout_seconds=5)
    harness.transport.script = {
        "compose_images": [images("honcho-redis", OLD), images("honcho-redis", NEW)],
        "compose_ps": [ps("honcho-redis")],
        "compose_up": [hang, ok()],  # asked again once cancelled: the agent has the outcome
    }
    async with harness.worker():
        handle = await harness.start(apply_input())
        await until(lambda: harness.transport.running > 0)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()  # once the 5 s heartbeat timeout has passed
    assert kinds(harness.transport).count("compose_rollback") == 1
    assert harness.transport.max_running == 1  # compose up had ended before the rollback's command ran
    assert harness.transport.running == 0
    # Still the cancel the operator asked for, not the attempt's timeout (`remote_failed`).
    assert isinstance(failure.value.cause, CancelledError)
    [line] = audit_lines(harness)
    assert (line["status"], line["exitCode"]) == ("cancelled", 5)
    assert line["rollback"]["image"]["outcome"] == "restored"
    replayer = Replayer(workflows=ALL_WORKFLOWS, data_converter=DATA_CONVERTER)
    await replayer.replay_workflow(await handle.fetch_history())  # the patched branch replays as it ran


async def test_reapply_never_reapplies_a_sha_that_was_rolled_back(dev_env, tmp_path):
    # On the dev server: the time-skipping one skips to its 10-year default execution timeout
    # when it finds no other timer, and closes the module state entity this test reads.
    write_platform(tmp_path, modules=[module_doc(health=FAST_HEALTH)])
    harness = Harness(client=dev_env.client, root=tmp_path)
    harness.transport.script = {"compose_images": [images("honcho-redis", OLD), images("honcho-redis", NEW)]}
    harness.transport.script["compose_ps"] = [ps("honcho-redis")]
    async with harness.worker():
        assert (await harness.outcome(await harness.start(apply_input()))).status == "applied"
        harness.transport.script["compose_ps"] = [health_by_image(harness.transport, "unhealthy", "healthy")]
        harness.transport.head = OTHER_SHA
        out = await harness.outcome(await harness.start(apply_input(plan(sha=OTHER_SHA), approval(sha=OTHER_SHA))))
        assert out.result["rollback"]["image"]["outcome"] == "restored"
        state = await harness.client.get_workflow_handle(module_state_id(harness.task_queue, "honcho-redis")).query(
            "state", result_type=ModuleState
        )
    assert state.last_applied.sha == SHA and state.last_failure.sha == OTHER_SHA
    assert state.last_failure.rollback.image.outcome == "restored"
    # What re-apply would apply is the last applied SHA; the rolled-back one never.
    assert state.last_applied.images[0].image_id == NEW


async def test_nothing_is_put_back_when_compose_up_never_ran_on_the_host(harness):
    """The agent refused compose up before anything ran (here: compose cannot load the
    file): the apply fails, and the rollback is skipped, not a ROLLBACK FAILED alarm."""
    refused = {"agent": 3, "run": "RUN", "answer": "refused"}
    harness.transport.script = {
        "compose_up": [ok(json.dumps({**refused, "verb": "apply", "reason": "compose_config",
                                      "error_class": "interpolation"}))],
        "compose_rollback": [ok(json.dumps({**refused, "verb": "rollback", "reason": "not_applied"}))],
    }
    out = await harness.apply(apply_input())
    assert out.status == "remote_failed", out.result
    assert "compose cannot load" in out.result["error"] and "(interpolation); nothing ran" in out.result["error"]
    image = out.result["rollback"]["image"]
    assert (image["outcome"], image["error"]) == ("skipped", "compose up never ran on the host")
    assert harness.transport.commands("compose_ps") == []  # nothing to watch either
