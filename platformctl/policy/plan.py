"""Step 1: is the plan well-formed, for one known module, from a clean tree?"""

from __future__ import annotations

import hashlib
import json
import re

from platformctl.config import MODULE_ID
from platformctl.models import DESTRUCTIVE_ACTIONS, Plan
from platformctl.outcomes import PolicyViolation

SHA = re.compile(r"[0-9a-f]{40}")
COMPOSE_SERVICE_TARGET = "compose.service."


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
