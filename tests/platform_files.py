"""Builders for a platform root (modules/, hosts.yaml, policy.yaml) and apply inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from platformctl.outcomes import PolicyViolation
from platformctl.policy.plan import plan_digest

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"
PIN = "rs2000.example.ts.net ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB1Yq9pTmYbLQxkqo7j2y8ysQ6vXg2YxpEo0kKqJSVGo"


def module_doc(module_id: str = "honcho-redis", host: str = "rs2000", **runtime: Any) -> dict:
    health = runtime.pop("health", None)
    doc: dict[str, Any] = {
        "id": module_id,
        "host": host,
        "spec": {
            "runtime": {"orchestrator": "docker-compose", "compose_file": "compose/core/compose.yaml", **runtime}
        },
    }
    if health is not None:
        doc["spec"]["health"] = health
    return doc


def host_doc(root: Path, **over: Any) -> dict:
    key = root / "keys" / "platform_deploy"
    key.parent.mkdir(exist_ok=True)
    key.write_text("not a real key: the fake transport never reads it\n")
    return {
        "address": "rs2000.example.ts.net",
        "user": "deploy",
        "remote_root": "/opt/platform",
        "known_hosts": PIN,
        "client_key": str(key),
        **over,
    }


def write_platform(
    root: Path,
    modules: list[dict] | None = None,
    hosts: dict[str, dict] | None = None,
    policy: dict | None = None,
) -> Path:
    for doc in modules if modules is not None else [module_doc()]:
        folder = root / "modules" / str(doc["id"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "module.yaml").write_text(yaml.safe_dump(doc))
    hosts = hosts if hosts is not None else {"rs2000": host_doc(root)}
    (root / "hosts.yaml").write_text(yaml.safe_dump({"hosts": hosts}))
    if policy is not None:
        (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    return root


def change(service: str = "honcho-redis", action: str = "update", summary: str = "bump image") -> dict:
    return {"target": f"compose.service.{service}", "action": action, "summary": summary}


def plan(module: str = "honcho-redis", sha: str = SHA, changes: list[dict] | None = None, **over: Any) -> dict:
    return {
        "module": module,
        "source_sha": sha,
        "source_dirty": False,
        "exitCode": 1,
        "changes": [change()] if changes is None else changes,
        **over,
    }


def approval(sha: str = SHA, pr: int | None = 165, **over: Any) -> dict:
    return {"approved_sha": sha, "approved_pr": pr, "approved_by": "ci", "allow_destructive": False, **over}


def apply_input(plan_: dict | None = None, approval_: dict | None | str = "default", **over: Any) -> dict:
    """An apply input; by default with an approval of its plan, as `platform-apply` sends it."""
    request: dict[str, Any] = {"plan": plan_ if plan_ is not None else plan(), **over}
    if approval_ == "default":
        try:
            request["approval"] = approval(plan_digest=plan_digest(request["plan"]))
        except PolicyViolation:  # a plan no digest exists for (a lone surrogate): the worker blocks it
            request["approval"] = approval()
    elif approval_ is not None:
        request["approval"] = approval_
    return request
