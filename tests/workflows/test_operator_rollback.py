"""RollbackWorkflow over the fake transport: an operator puts a module back on
the images of the successful apply before the last one.

These run on a real dev server (tests/workflows/conftest.py's dev_env; the
module's health window is short).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import RawValue

from platformctl.commands import image_pin
from platformctl.models import Approval, ModuleEvent, ModuleState, ReapplyCandidate
from platformctl.module_state import module_state_id
from platformctl.policy.approval import sign
from platformctl.policy.plan import plan_digest
from platformctl.policy.reapply import skip_reason
from platformctl.transport.base import RemoteOutput
from platformctl.transport.fake import empty_images, failed, images, ok
from tests.conftest import Harness
from tests.platform_files import OTHER_SHA, SHA, apply_input, approval, module_doc, plan, write_platform
from tests.workflows.conftest import FAST_HEALTH

OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64
REQUEST = {"module": "honcho-redis", "approved_by": "alice", "reason": "bad release"}


@pytest.fixture
def harness(dev_env, tmp_path) -> Harness:
    write_platform(tmp_path, modules=[module_doc(health=FAST_HEALTH)])
    return Harness(client=dev_env.client, root=tmp_path)


def signed(key: bytes | None, raw: dict) -> dict:
    """`raw`, an approval of `plan(sha=...)` (every plan here), bound to it and signed with `key`."""
    raw["plan_digest"] = plan_digest(plan(sha=raw["approved_sha"]))
    if key is not None:
        raw["signature"] = sign(key, "honcho-redis", Approval.model_validate(raw))
    return raw


async def two_applies(harness, key: bytes | None = None) -> None:
    """SHA (its service ends on OLD), then OTHER_SHA (on NEW)."""
    harness.transport.script["compose_images"] = [
        empty_images(), images("honcho-redis", OLD), images("honcho-redis", OLD), images("honcho-redis", NEW),
    ]
    first = apply_input(approval_=signed(key, approval()))
    assert (await harness.outcome(await harness.start(first))).status == "applied"
    harness.transport.head = OTHER_SHA
    second = apply_input(plan(sha=OTHER_SHA), signed(key, approval(sha=OTHER_SHA)))
    assert (await harness.outcome(await harness.start(second))).status == "applied"


async def rollback(harness, request, workflow_id: str | None = None) -> tuple[str, dict, str | None]:
    handle = await harness.client.start_workflow(
        "RollbackWorkflow", request, id=workflow_id or f"rollback-{uuid.uuid4()}", task_queue=harness.task_queue
    )
    return await rollback_result(handle)


async def rollback_result(handle: WorkflowHandle) -> tuple[str, dict, str | None]:
    try:
        result = await handle.result()
    except WorkflowFailureError as e:
        detail = e.cause.details[0]
        return detail["status"], detail, e.cause.type
    data = result if isinstance(result, dict) else result.model_dump()
    return data["status"], data, None


async def module_state(harness) -> ModuleState:
    handle = harness.client.get_workflow_handle(module_state_id(harness.task_queue, "honcho-redis"))
    return await handle.query("state", result_type=ModuleState)


async def test_a_rollback_goes_back_to_the_images_of_the_apply_before_the_last_and_pins_the_module(harness):
    async with harness.worker():
        await two_applies(harness)
        harness.transport.calls.clear()
        wid = f"rollback-{uuid.uuid4()}"
        status, result, _ = await rollback(harness, REQUEST, wid)
        state = await module_state(harness)
        query = await harness.client.get_workflow_handle(wid).query("status")
    assert (status, result["exitCode"], result["to_sha"], result["image_id"]) == ("rolled_back", 9, SHA, OLD)
    assert [c.kind for _, c in harness.transport.calls][:2] == ["compose_images", "compose_rollback"]
    [pin] = [c.stdin for _, c in harness.transport.calls if c.kind == "compose_rollback"]
    assert pin == image_pin("honcho-redis", OLD)
    assert result["health"]["health"] == "healthy"
    assert (query["phase"], query["status"], query["module"]) == ("done", "rolled_back", "honcho-redis")
    assert state.pinned is not None and (state.pinned.by, state.pinned.sha) == ("alice", SHA)
    reason = skip_reason(ReapplyCandidate(module="honcho-redis", state=state, host="rs2000", verify_checkout=True))
    assert reason is not None and "pinned by the rollback" in reason


async def test_a_module_already_on_those_images_is_left_alone(harness):
    async with harness.worker():
        await two_applies(harness)
        harness.transport.script["compose_images"] = [images("honcho-redis", OLD)]
        status, result, _ = await rollback(harness, REQUEST)
    assert (status, result["exitCode"]) == ("no_changes", 0)
    assert "compose_rollback" not in [c.kind for _, c in harness.transport.calls]


async def test_images_gone_from_the_host_are_reported_as_such(harness):
    async with harness.worker():
        await two_applies(harness)
        harness.transport.script["compose_rollback"] = [failed(1, f"Error: No such image: {OLD}")]
        status, result, error_type = await rollback(harness, REQUEST)
    assert (status, result["exitCode"], error_type) == ("remote_failed", 4, "RemoteFailed")
    assert "no longer on rs2000" in result["error"]


async def test_nothing_to_go_back_to_is_blocked_before_anything_runs(harness):
    async with harness.worker():
        status, result, error_type = await rollback(harness, REQUEST)
    assert (status, result["exitCode"], error_type) == ("blocked", 3, "PolicyViolation")
    assert "nothing to go back to" in result["error"]
    assert harness.transport.calls == []


async def test_a_module_that_moved_to_another_service_is_not_rolled_back_to_its_old_images(harness):
    async with harness.worker():
        await two_applies(harness)
        write_platform(harness.root, modules=[module_doc(compose_service="honcho-redis-2", health=FAST_HEALTH)])
        harness.transport.calls.clear()
        status, result, error_type = await rollback(harness, REQUEST)
    assert (status, result["exitCode"], error_type) == ("blocked", 3, "PolicyViolation")
    assert "ran service 'honcho-redis' on rs2000; the module now names 'honcho-redis-2'" in result["error"]
    assert harness.transport.calls == []


KEY = b"k" * 32
# Signed like an approval of the SHA whose images come back, with no PR.
SIGNED_FIELDS = {"approved_sha": SHA, "approved_pr": None, "approved_by": "alice"}


def with_key(harness, tmp_path) -> dict:
    """The worker takes only signed requests: a good one for SHA."""
    (tmp_path / "approval.key").write_bytes(KEY)
    harness.approval_key_file = tmp_path / "approval.key"
    return {**REQUEST, "to_sha": SHA, "signature": sign(KEY, "honcho-redis", Approval.model_validate(SIGNED_FIELDS))}


async def test_with_a_signing_key_only_a_signed_rollback_runs(harness, tmp_path):
    good, key = with_key(harness, tmp_path), KEY
    async with harness.worker():
        await two_applies(harness, key)
        unsigned = await rollback(harness, REQUEST)
        forged = await rollback(harness, {**good, "reason": "x", "approved_by": "mallory"})
        assert "compose_rollback" not in [c.kind for _, c in harness.transport.calls]
        status, result, _ = await rollback(harness, good)
    assert unsigned[0] == forged[0] == "approval_mismatch" and unsigned[1]["exitCode"] == 5
    assert "not signed" in unsigned[1]["error"] and "does not match" in forged[1]["error"]
    assert (status, result["exitCode"]) == ("rolled_back", 9)


async def test_with_a_signing_key_images_from_a_record_no_worker_sealed_are_never_pinned(harness, tmp_path):
    # Anyone who can reach the namespace can signal the module's state, and a request's
    # signature (readable in old histories) covers the SHA, not the images.
    good, key = with_key(harness, tmp_path), KEY
    evil = "sha256:" + "e" * 64
    async with harness.worker():
        await two_applies(harness, key)
        state = await module_state(harness)
        genuine = state.previous_applied
        assert genuine is not None and genuine.seal is not None
        state_handle = harness.client.get_workflow_handle(module_state_id(harness.task_queue, "honcho-redis"))
        outcomes = []
        another_keys = sign(b"r" * 32, "honcho-redis", Approval.model_validate(SIGNED_FIELDS))
        for forged_seal in (None, genuine.seal, another_keys):
            evil_images = [i.model_copy(update={"image_id": evil}) for i in genuine.images]
            forged = genuine.model_copy(update={"images": evil_images, "seal": forged_seal})
            # Forged as the apply before the last: the last one is recorded again after it.
            for record in (forged, state.last_applied):
                await state_handle.signal("record", ModuleEvent(module="honcho-redis", applied=record))
            assert (await module_state(harness)).previous_applied == forged
            outcomes.append(await rollback(harness, good))
        assert "compose_rollback" not in [c.kind for _, c in harness.transport.calls]
    assert [(status, error_type) for status, _, error_type in outcomes] == [("blocked", "PolicyViolation")] * 3
    assert "carries no seal" in outcomes[0][1]["error"]
    assert all("not sealed with this worker's signing key" in r["error"] for _, r, _ in outcomes[1:])


@pytest.mark.parametrize("change", ["expired", "key_rotated"])
async def test_a_request_is_checked_again_right_before_the_pin(harness, tmp_path, change):
    # Planned while valid, then held up by the project lock: by the time the host would
    # change, the request has expired, or the worker's key is another one.
    key = KEY if change == "key_rotated" else None
    request = with_key(harness, tmp_path) if key else dict(REQUEST)
    holding, released = asyncio.Event(), asyncio.Event()

    async def held_up(timeout_s: float) -> RemoteOutput:
        holding.set()
        await released.wait()
        return ok()

    async with harness.worker():
        await two_applies(harness, key)
        harness.transport.script["compose_up"] = [held_up]
        holder = await harness.start(apply_input(plan(sha=OTHER_SHA), signed(key, approval(sha=OTHER_SHA))))
        await asyncio.wait_for(holding.wait(), 30)
        if change == "expired":
            expires = datetime.now(UTC) + timedelta(seconds=3)
            request["expires_at"] = expires.isoformat().replace("+00:00", "Z")
        handle = await harness.client.start_workflow(
            "RollbackWorkflow", request, id=f"rollback-{uuid.uuid4()}", task_queue=harness.task_queue
        )
        while (phase := (await handle.query("status"))["phase"]) != "waiting_for_lock":
            assert phase != "done", await rollback_result(handle)
            await asyncio.sleep(0.05)
        if change == "expired":
            await asyncio.sleep((expires - datetime.now(UTC)).total_seconds() + 0.1)
        else:
            (tmp_path / "approval.key").write_bytes(b"n" * 32)
        released.set()
        assert (await harness.outcome(holder)).status == "applied"
        status, result, error_type = await rollback_result(handle)
        state = await module_state(harness)
    assert (status, result["exitCode"], error_type) == ("approval_mismatch", 5, "ApprovalMismatch")
    assert ("expired" if change == "expired" else "does not match") in result["error"]
    assert "compose_rollback" not in [c.kind for _, c in harness.transport.calls]
    assert state.pinned is None


@pytest.mark.parametrize(
    "raw",
    [b'"roll it back"', b'{"module": "honcho-redis"}', b'{"module": "honcho-redis", "approved_by": "", "reason": "x"}'],
)
async def test_a_request_that_does_not_parse_is_blocked(harness, raw):
    async with harness.worker():
        status, result, _ = await rollback(harness, RawValue(_json_payload(raw)))
    assert (status, result["exitCode"]) == ("blocked", 3)
    assert harness.transport.calls == []


def _json_payload(data: bytes):
    from temporalio.api.common.v1 import Payload

    return Payload(metadata={"encoding": b"json/plain"}, data=data)
