"""The seal on a successful apply's record: an operator's rollback pins only images a worker recorded."""

from __future__ import annotations

import pytest

from platformctl.models import AppliedRecord, ContainerImage
from platformctl.outcomes import PolicyViolation
from platformctl.policy.record_seal import check_seal, seal
from tests.platform_files import OTHER_SHA, SHA, approval, plan

KEY = b"k" * 32
OLD = "sha256:" + "a" * 64
EVIL = "sha256:" + "e" * 64


def record(image_id: str = OLD, **over: object) -> AppliedRecord:
    fields: dict[str, object] = {
        "sha": SHA, "pr": 165, "approved_by": "ci", "plan": plan(), "approval": approval(), "plan_digest": None,
        "workflow_id": "apply-1", "host": "rs2000", "compose_service": "honcho-redis", "at": "2026-11-28T00:00:00Z",
        "images": [ContainerImage(container="p-honcho-redis-1", repository="r", tag="1", image_id=image_id)],
    }
    return AppliedRecord.model_validate({**fields, **over})


def sealed(rec: AppliedRecord, key: bytes = KEY, module: str = "honcho-redis") -> AppliedRecord:
    return rec.model_copy(update={"seal": seal(key, module, rec)})


def test_a_record_sealed_with_the_key_passes():
    check_seal(KEY, "honcho-redis", sealed(record()))


def test_without_a_key_nothing_is_checked():
    check_seal(None, "honcho-redis", record())


def test_an_unsealed_record_is_refused_with_a_key():
    with pytest.raises(PolicyViolation, match="carries no seal"):
        check_seal(KEY, "honcho-redis", record())


@pytest.mark.parametrize(
    "change",
    [
        {"images": [ContainerImage(container="p-honcho-redis-1", repository="r", tag="1", image_id=EVIL)]},
        {"images": []},
        {"sha": OTHER_SHA},
        {"workflow_id": "apply-2"},
        {"host": "rs3000"},
        {"compose_service": "other"},
    ],
    ids=["image", "no-images", "sha", "workflow", "host", "service"],
)
def test_a_sealed_field_changed_afterwards_is_refused(change):
    forged = sealed(record()).model_copy(update=change)
    with pytest.raises(PolicyViolation, match="not sealed with this worker's signing key"):
        check_seal(KEY, "honcho-redis", forged)


def test_another_modules_record_or_another_key_is_refused():
    with pytest.raises(PolicyViolation, match="not sealed"):
        check_seal(KEY, "honcho-redis", sealed(record(), module="other-module"))
    with pytest.raises(PolicyViolation, match="not sealed"):
        check_seal(KEY, "honcho-redis", sealed(record(), key=b"r" * 32))


def test_a_seal_that_is_not_hex_is_refused_not_raised():
    with pytest.raises(PolicyViolation, match="not sealed"):
        check_seal(KEY, "honcho-redis", record(seal="é" * 64))

