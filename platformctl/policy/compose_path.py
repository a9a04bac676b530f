"""Step 3: the compose file path, resolved under remote_root and guarded.

The returned absolute path is the one compose is given: nothing re-joins or
re-normalizes it later, so the path checked is the path executed.
"""

from __future__ import annotations

import posixpath
import re

from platformctl.outcomes import PolicyViolation

# Whitelisted characters only: quoting would make `$(...)` or `;` harmless,
# but a path that needs quoting is not one an operator meant.
_COMPONENT = re.compile(r"[A-Za-z0-9_.@+][A-Za-z0-9_.@+-]*")


def check_remote_root(remote_root: str) -> str:
    if (
        not remote_root.startswith("/")
        or remote_root == "/"
        or posixpath.normpath(remote_root) != remote_root
        or not all(_COMPONENT.fullmatch(c) for c in remote_root[1:].split("/"))
    ):
        raise PolicyViolation(f"remote_root must be a normalized absolute path other than '/', got {remote_root!r}")
    return remote_root


def _is_under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def guard_compose_path(compose_file: str, remote_root: str, sacred_paths: tuple[str, ...]) -> str:
    """Return the absolute compose path, or raise PolicyViolation."""
    root = check_remote_root(remote_root)
    if not compose_file:
        raise PolicyViolation("compose_file is empty")
    if compose_file.startswith("/"):
        raise PolicyViolation(f"compose_file must be relative to remote_root, got absolute {compose_file!r}")
    if "~" in compose_file:
        raise PolicyViolation(f"compose_file must not contain '~': {compose_file!r}")
    parts = compose_file.split("/")
    if ".." in parts:
        raise PolicyViolation(f"compose_file must not contain '..': {compose_file!r}")
    bad = [p for p in parts if p not in ("", ".") and not _COMPONENT.fullmatch(p)]
    if bad:
        raise PolicyViolation(
            f"compose_file {compose_file!r} has a disallowed component {bad[0]!r} "
            "(letters, digits and _ . @ + - only; no control characters, no leading '-')"
        )
    if not compose_file.endswith((".yml", ".yaml")):
        raise PolicyViolation(f"compose_file must end in .yml or .yaml: {compose_file!r}")
    path = posixpath.normpath(posixpath.join(root, compose_file))
    if not path.startswith(root + "/"):
        raise PolicyViolation(f"compose_file {compose_file!r} resolves outside remote_root {root!r}")
    for sacred in sacred_paths:
        guarded = posixpath.normpath(sacred if sacred.startswith("/") else posixpath.join(root, sacred))
        # normpath keeps exactly two leading slashes (POSIX leaves "//x" to the
        # system), but on Linux "//etc/" is /etc: without this, a sacred entry
        # spelt so would protect nothing (found by tests/policy/test_properties.py).
        if guarded.startswith("//"):
            guarded = "/" + guarded.lstrip("/")
        if _is_under(path, guarded):
            raise PolicyViolation(f"compose_file {compose_file!r} touches protected path {sacred!r}")
    return path
