"""Step 1: is the plan well-formed, for one known module, from a clean tree?"""

from __future__ import annotations

import hashlib
import json
import re

from platformctl.config import MODULE_ID
from platformctl.models import DESTRUCTIVE_ACTIONS, Action, Plan
from platformctl.outcomes import PolicyViolation

SHA = re.compile(r"[0-9a-f]{40}")
COMPOSE_SERVICE_TARGET = "compose.service."
# Which plan actions run which host agent shape (platformctl.commands.ACTION_FLAGS).
SHAPES = {"create": "up", "update": "up", "restart": "restart", "recreate": "recreate", "remove": "remove"}


def validate_plan(plan: Plan, compose_service: str) -> None:
    """Raise PolicyViolation unless `plan` may be applied to this module's service."""
    if not MODULE_ID.fullmatch(plan.module):
        raise PolicyViolation(f"invalid module id {plan.module!r}: must match {MODULE_ID.pattern}")
    if not SHA.fullmatch(plan.source_sha):
        raise PolicyViolation(f"source_sha must be 40 lowercase hex characters, got {plan.source_sha!r}")
    if plan.source_dirty:
        raise PolicyViolation("plan was made from a dirty tree: commit first, then plan again")
    ours = COMPOSE_SERVICE_TARGET + compose_service
    for change in plan.changes:
        # Fail closed: any other spelling (case, spaces, another kind of target)
        # may be another module's change, and applying only ours would hide it.
        if change.target != ours:
            raise PolicyViolation(
                f"plan for module {plan.module!r} has change target {change.target[:200]!r}; every target must be "
                f"exactly {ours!r}: split a plan that touches anything else into one plan per module"
            )
    # A lone `remove` passes here (the planner checks its own plans with this): compose up's
    # step refuses it, before anything changes on a host.
    shapes = sorted({SHAPES[change.action] for change in plan.changes})
    if len(shapes) > 1:
        raise PolicyViolation(
            f"plan mixes actions that run differently on the host ({', '.join(shapes)}): one plan, one action"
        )


def compose_action(plan: Plan) -> Action:
    """The action compose up runs for `plan`: its changes' (validate_plan refuses a mix), `update`
    (plain `up -d`) when it has none. Never raises: the workflow calls it, also for plans validated
    before the action was honoured; the strongest wins there, and the step refuses `remove`."""
    actions = {change.action for change in plan.changes}
    order: tuple[Action, ...] = ("remove", "recreate", "restart", "create")
    return next((a for a in order if a in actions), "update")


def is_destructive(plan: Plan) -> bool:
    return any(change.action in DESTRUCTIVE_ACTIONS for change in plan.changes)


def plan_digest(plan: object) -> str:
    """The contract's plan digest: lowercase hex SHA-256 of the plan object exactly as
    received (raw JSON, not the parsed model, which fills defaults and redacts), in
    compact key-sorted form. CI computes it from its plan file, the worker from its input.

    Raises PolicyViolation for a value JSON cannot carry as UTF-8 (a lone surrogate)."""
    canonical = json.dumps(plan, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    except UnicodeEncodeError:
        raise PolicyViolation("the plan holds a string that is not valid Unicode (a lone surrogate)") from None
