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
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_plan(plan: Plan, compose_service: str) -> None:
    """Raise PolicyViolation unless `plan` may be applied to this module's service."""
    if not MODULE_ID.fullmatch(plan.module):
        raise PolicyViolation(f"invalid module id {plan.module!r}: must match {MODULE_ID.pattern}")
    if not SHA.fullmatch(plan.source_sha):
        raise PolicyViolation(f"source_sha must be 40 lowercase hex characters, got {plan.source_sha!r}")
    if plan.source_dirty:
        raise PolicyViolation("plan was made from a dirty tree: commit first, then plan again")
    for change in plan.changes:
        if not change.target or _CONTROL.search(change.target):
            raise PolicyViolation(f"invalid change target {change.target!r}")
        if change.target.startswith(COMPOSE_SERVICE_TARGET):
            service = change.target[len(COMPOSE_SERVICE_TARGET) :]
            if service != compose_service:
                # Applying only our service would silently drop the other one.
                raise PolicyViolation(
                    f"plan for module {plan.module!r} changes compose service {service!r}, "
                    f"which is not this module's service {compose_service!r}: split it into one plan per module"
                )


def is_destructive(plan: Plan) -> bool:
    return any(change.action in DESTRUCTIVE_ACTIONS for change in plan.changes)


def plan_digest(plan: Plan) -> str:
    canonical = json.dumps(plan.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
