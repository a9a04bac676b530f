"""Every command this worker can ever send to a host, built in one place.

A command is an argument vector; it is rendered with shell quoting for every
part, because SSH hands the string to the remote user's shell. Each builder
re-checks its parts, so nothing but these shapes can reach a host even if a
caller skipped a policy check.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass

SERVICE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeCommand(ValueError):
    """A builder was handed a part that must never reach a host."""


@dataclass(frozen=True)
class RemoteCommand:
    kind: str
    argv: tuple[str, ...]

    def render(self) -> str:
        return shlex.join(self.argv)


def _absolute_path(path: str) -> str:
    if (
        not path.startswith("/")
        or _CONTROL.search(path)
        or posixpath.normpath(path) != path
        or path.startswith("//")
    ):
        raise UnsafeCommand(f"not a normalized absolute path: {path!r}")
    return path


def _compose_file(path: str) -> str:
    path = _absolute_path(path)
    if not path.endswith((".yml", ".yaml")):
        raise UnsafeCommand(f"not a compose file: {path!r}")
    return path


def _service(name: str) -> str:
    if not SERVICE_NAME.fullmatch(name):
        raise UnsafeCommand(f"not a compose service name: {name!r}")
    return name


def compose_up(compose_path: str, service: str) -> RemoteCommand:
    return RemoteCommand(
        "compose_up",
        ("docker", "compose", "-f", _compose_file(compose_path), "up", "-d", _service(service)),
    )


def compose_ps(compose_path: str, service: str) -> RemoteCommand:
    return RemoteCommand(
        "compose_ps",
        ("docker", "compose", "-f", _compose_file(compose_path), "ps", "--format", "json", _service(service)),
    )


def git_head(remote_root: str) -> RemoteCommand:
    """Read-only: which commit the host's checkout holds."""
    return RemoteCommand("git_head", ("git", "-C", _absolute_path(remote_root), "rev-parse", "HEAD"))
