"""Step 6: what `docker compose ps --all --format json` says about one service.

Compose printed one JSON array before v2.21 and one object per line since;
both are accepted. `Health` is "" when the service has no healthcheck, in
which case running is enough. `--all` lists stopped containers, and with them
the exited one-off containers of `docker compose run`: those are not the
service and are left out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from platformctl.models import ServiceObservation
from platformctl.policy.remote_output import ContainerFacts

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


def _one_off(row: dict[str, Any]) -> bool:
    labels = row.get("Labels")
    return isinstance(labels, str) and "com.docker.compose.oneoff=True" in labels.split(",")


def _exit_code(row: dict[str, Any], state: str) -> int | None:
    """A stopped container's exit code (docker reports 0 for a running one)."""
    code = row.get("ExitCode")
    if state in _FINAL_STATES and type(code) is int and 0 <= code <= 255:
        return code
    return None


def observation(row: dict[str, Any]) -> ServiceObservation:
    state = _known(row.get("State", ""), _STATES)
    return ServiceObservation(
        state=state, health=_known(row.get("Health", ""), _HEALTHS), exit_code=_exit_code(row, state)
    )


def observe(stdout: str, service: str) -> ServiceObservation:
    """Reduce every container of `service` to the least healthy one."""
    rows = [r for r in _rows(stdout) if r.get("Service", service) == service and not _one_off(r)]
    return _least_healthy([observation(r) for r in rows])


def observe_facts(containers: Sequence[ContainerFacts]) -> ServiceObservation:
    """The agent's facts of each container, reduced to the least healthy one, with
    the restarts of all of them (a crash loop in any one shows)."""
    least = _least_healthy([
        ServiceObservation(state=c.state, health=c.health, exit_code=c.exit_code if c.state in _FINAL_STATES else None)
        for c in containers
    ])  # fmt: skip
    counts = [c.restart_count for c in containers if c.restart_count is not None]
    return least.model_copy(update={"restart_count": sum(counts) if counts else None})


def _least_healthy(observations: list[ServiceObservation]) -> ServiceObservation:
    if not observations:
        return ServiceObservation(state="", health="")
    rank = {"failed": 0, "waiting": 1, "healthy": 2}
    return min(observations, key=lambda o: rank[verdict(o)])


def verdict(o: ServiceObservation) -> Verdict:
    if o.state in _FINAL_STATES:
        return "failed"  # a stopped container will not come back by waiting
    if o.state == "running" and o.health in ("", "healthy"):
        return "healthy"
    return "waiting"  # created, restarting, starting, unhealthy (may recover), or absent
