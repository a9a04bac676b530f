"""Where an apply runs, derived from the platform files by module id.

The apply's steps derive it once (validate plan, guard path, allowlist). Each
remote activity derives it again and refuses when the files no longer give
what was checked, so a hand-made activity input cannot point compose at
another host, path or command.
"""

from __future__ import annotations

import posixpath
import re

from platformctl import commands
from platformctl.config import Settings, load_hosts, load_module, load_sacred_paths
from platformctl.models import HostConfig, Target
from platformctl.outcomes import PolicyViolation
from platformctl.policy.compose_path import guard_compose_path
from platformctl.policy.hosts import check_host

_NOT_IN_PROJECT_NAME = re.compile(r"[^a-z0-9_-]")


def compose_project(compose_path: str) -> str:
    """The project name compose gives a file run without -p: its folder's name,
    normalized as compose does (lowercase, only a-z 0-9 _ -, no leading _ or -).
    A top-level `name:` in the file is not read: the file lives on the host."""
    folder = posixpath.basename(posixpath.dirname(compose_path))
    return _NOT_IN_PROJECT_NAME.sub("", folder.lower()).lstrip("_-") or folder


def make_target(host: HostConfig, compose_path: str, service: str, settings: Settings) -> Target:
    return Target(
        host=host,
        compose_path=compose_path,
        compose_service=service,
        command=commands.compose_up(compose_path, service).render(),
        execute=settings.execute_remote,
        project=compose_project(compose_path),
        heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
    )


def derive_target(settings: Settings, module_id: str) -> Target:
    root = settings.platform_root
    module = load_module(root, module_id)
    host = check_host(module.host, load_hosts(root))
    path = guard_compose_path(module.spec.runtime.compose_file, host.remote_root, load_sacred_paths(root))
    return make_target(host, path, module.compose_service, settings)


def check_unchanged(settings: Settings, module_id: str, target: Target) -> None:
    """Refuse a remote step whose target is not what the platform files give now."""
    now = derive_target(settings, module_id)
    differs = [
        name
        for name, then, current in (
            ("host", target.host, now.host),
            ("compose file", target.compose_path, now.compose_path),
            ("compose service", target.compose_service, now.compose_service),
            ("command", target.command, now.command),
        )
        if then != current
    ]
    if differs:
        raise PolicyViolation(
            f"module {module_id!r}: the platform files no longer give the {', '.join(differs)} this apply checked; "
            "refusing to run on a target that was not checked"
        )
