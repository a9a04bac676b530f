"""Step 1 policy: `validate_plan`, `is_destructive` and `plan_digest` (no Temporal)."""

from __future__ import annotations

import hashlib
import json

import pytest

from platformctl.models import Plan
from platformctl.outcomes import PolicyViolation
from platformctl.policy.plan import compose_action, is_destructive, plan_digest, validate_plan
from tests.platform_files import OTHER_SHA, SHA, change, plan

SERVICE = "honcho-redis"


def make(**over) -> Plan:
    return Plan.model_validate(plan(**over))


def test_a_clean_plan_for_its_own_service_passes():
    validate_plan(make(), SERVICE)
    validate_plan(make(changes=[]), SERVICE)


@pytest.mark.parametrize(
    "sha",
    [
        SHA[:39],
        SHA + "0",
        SHA.upper(),
        "g" * 40,
        "",
        SHA[:20] + " " + SHA[21:],
        SHA + "\n",
    ],
    ids=["39-chars", "41-chars", "upper-case", "not-hex", "empty", "space", "trailing-newline"],
)
def test_source_sha_must_be_40_lowercase_hex(sha):
    with pytest.raises(PolicyViolation, match="source_sha must be 40 lowercase hex"):
        validate_plan(make(sha=sha), SERVICE)


def test_dirty_tree_is_rejected():
    with pytest.raises(PolicyViolation, match="dirty tree"):
        validate_plan(make(source_dirty=True), SERVICE)


@pytest.mark.parametrize(
    "module",
    ["../x", "Honcho", "-redis", "a_b", "a b", "a/b", "", "a" * 64, "redis\n", "$(id)"],
)
def test_module_id_must_match_the_regex(module):
    with pytest.raises(PolicyViolation, match="invalid module id"):
        validate_plan(make(module=module), SERVICE)


@pytest.mark.parametrize("module", ["a", "0", "honcho-redis", "a" * 63])
def test_module_id_edges_that_are_valid(module):
    validate_plan(make(module=module), SERVICE)


def test_a_change_to_another_modules_service_is_rejected():
    other = make(changes=[change(), change(service="postgres")])
    with pytest.raises(PolicyViolation, match="target 'compose.service.postgres'.*one plan per module"):
        validate_plan(other, SERVICE)


@pytest.mark.parametrize("service", ["", "honcho-redis-2", "Honcho-redis", "honcho-redis ", " honcho-redis"])
def test_compose_service_target_must_name_exactly_this_service(service):
    with pytest.raises(PolicyViolation, match="must be exactly 'compose.service.honcho-redis'"):
        validate_plan(make(changes=[change(service=service)]), SERVICE)


@pytest.mark.parametrize(
    "target",
    ["module.honcho-redis", "Compose.Service.honcho-redis", "COMPOSE.SERVICE.honcho-redis",
     "compose.services.honcho-redis", "compose.service.honcho-redis.extra", "compose.service.*",
     "compose.volume.honcho-redis"],
)
def test_any_other_spelling_of_a_target_fails_closed(target):
    with pytest.raises(PolicyViolation, match="must be exactly"):
        validate_plan(make(changes=[{"target": target, "action": "update"}]), SERVICE)


@pytest.mark.parametrize(
    "target",
    [
        "",
        "compose.service.honcho-redis\n",
        "compose.service.honcho-redis\r",
        "compose.service.honcho\tredis",
        "compose.service.honcho-redis\x00",
        "compose.service.honcho-redis\x1b[2J",
        "compose.service.honcho-redis\x7f",
    ],
    ids=["empty", "newline", "carriage-return", "tab", "nul", "escape", "del"],
)
def test_empty_target_or_control_characters_are_rejected(target):
    with pytest.raises(PolicyViolation, match="must be exactly"):
        validate_plan(make(changes=[{"target": target, "action": "update"}]), SERVICE)


@pytest.mark.parametrize(
    "actions, destructive",
    [
        ([], False),
        (["create", "update", "restart"], False),
        (["recreate"], True),
        (["remove"], True),
        (["update", "remove"], True),
    ],
)
def test_destructive_detection(actions, destructive):
    assert is_destructive(make(changes=[change(action=a) for a in actions])) is destructive


@pytest.mark.parametrize(
    "actions, action",
    [([], "update"), (["update"], "update"), (["create", "update"], "create"), (["restart"], "restart"),
     (["recreate", "recreate"], "recreate"), (["remove"], "remove")],
)
def test_the_action_compose_up_runs_and_which_plans_pass(actions, action):
    planned = make(changes=[change(action=a) for a in actions])
    assert compose_action(planned) == action
    validate_plan(planned, SERVICE)  # remove too: compose up's step refuses it (the planner writes such plans)


@pytest.mark.parametrize("actions", [["update", "restart"], ["recreate", "create"], ["restart", "remove"]])
def test_a_plan_mixing_actions_that_run_differently_is_refused(actions):
    with pytest.raises(PolicyViolation, match="plan mixes actions .*: one plan, one action"):
        validate_plan(make(changes=[change(action=a) for a in actions]), SERVICE)


# ---- plan_digest --------------------------------------------------------------


def test_digest_is_the_contracts_sha256_of_the_plan_as_received():
    given = plan(changes=[change(summary="bump image to 7.2.5 (café)")])
    canonical = json.dumps(given, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert plan_digest(given) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    # Key order in the file does not matter; non-ASCII is hashed as UTF-8, not as \u escapes.
    assert plan_digest(dict(reversed(list(given.items())))) == plan_digest(given)
    escaped = json.dumps(given, sort_keys=True, separators=(",", ":"))
    assert plan_digest(given) != hashlib.sha256(escaped.encode()).hexdigest()


@pytest.mark.parametrize(
    "over",
    [
        {"sha": OTHER_SHA},
        {"module": "postgres"},
        {"source_dirty": True},
        {"changes": []},
        {"changes": [change(action="restart")]},
        {"changes": [change(summary="bump image to 7.2.5")]},
        {"changes": [change(), change()]},
        {"note": "a field the model ignores is still part of what was approved"},
        {"exitCode": None},
    ],
    ids=["sha", "module", "dirty", "no-changes", "action", "summary", "extra-change", "extra-field", "default"],
)
def test_digest_changes_with_anything_in_the_plan(over):
    assert plan_digest(plan(**over)) != plan_digest(plan())


def test_a_lone_surrogate_has_no_digest():
    with pytest.raises(PolicyViolation, match="not valid Unicode"):
        plan_digest(plan(changes=[change(summary="\ud800")]))
