"""Step 6: what `docker compose ps --format json` says about one service.

Compose printed one JSON array before v2.21 and one object per line since;
both are accepted. `Health` is "" when the service has no healthcheck, in
which case running is enough.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from platformctl.models import ServiceObservation

Verdict = Literal["healthy", "waiting", "failed"]
_FINAL_STATES = frozenset({"exited", "dead"})
# What docker reports; anything else a host prints is stored as "unknown", never verbatim.
_STATES = frozenset({"created", "running", "paused", "restarting", "removing", "exited", "dead"})
_HEALTHS = frozenset({"", "starting", "healthy", "unhealthy"})


def _known(value: object, known: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in known else "unknown"


class UnreadablePs(ValueError):
    pass


def _rows(stdout: str) -> list[dict[str, Any]]:
    text = stdout.strip()
    if not text:
        return []
    try:
        if text.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, RecursionError) as e:  # nesting past the parser's recursion limit
        raise UnreadablePs(f"compose ps printed something that is not JSON: {str(e)[:200]}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UnreadablePs("compose ps JSON is not a list of objects")
    return rows


def observe(stdout: str, service: str) -> ServiceObservation:
    """Reduce every container of `service` to the least healthy one."""
    rows = [r for r in _rows(stdout) if r.get("Service", service) == service]
    if not rows:
        return ServiceObservation(state="", health="")
    observations = [
        ServiceObservation(state=_known(r.get("State", ""), _STATES), health=_known(r.get("Health", ""), _HEALTHS))
        for r in rows
    ]
    rank = {"failed": 0, "waiting": 1, "healthy": 2}
    return min(observations, key=lambda o: rank[verdict(o)])


def verdict(o: ServiceObservation) -> Verdict:
    if o.state in _FINAL_STATES:
        return "failed"  # a stopped container will not come back by waiting
    if o.state == "running" and o.health in ("", "healthy"):
        return "healthy"
    return "waiting"  # created, restarting, starting, unhealthy (may recover), or absent
