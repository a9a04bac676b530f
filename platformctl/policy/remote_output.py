"""What of a host's output may be kept: typed facts and a fixed vocabulary, nothing else.

Compose's own messages carry secrets verbatim (an interpolation error quotes
the value; a `$` in a .env password prints the rest of it as a variable name,
on every successful apply), and redacting them shape by shape never converges.
So no text a host prints is stored: a command's record is its exit code,
duration, byte count and SHA-256 of the output, an error class from the list
below, and the progress lines that match a template of names, rebuilt from
their parts.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

ErrorClass = Literal[
    "gate", "timeout", "env_file", "interpolation", "image", "port", "build", "permission", "engine", "config",
    "unknown",
]  # fmt: skip

# Lower-cased needles, first match wins: the specific causes before the broad ones.
_CLASSES: tuple[tuple[ErrorClass, tuple[str, ...]], ...] = (
    ("env_file", ("failed to read", "env file", "unterminated quoted value", "unexpected character")),
    ("interpolation", ("invalid interpolation", "invalid template", "required variable")),
    ("image", ("pull access denied", "manifest unknown", "no such image", "repository does not exist",
               "failed to resolve reference", "error pulling", "not found: manifest", "manifest for")),
    ("port", ("port is already allocated", "address already in use")),
    ("build", ("failed to solve", "failed to build", "build failed", "dockerfile")),
    ("permission", ("permission denied", "operation not permitted")),
    ("engine", ("cannot connect to the docker daemon", "is the docker daemon running", "docker.sock")),
    ("config", ("no such service", "yaml:", "validating ", "no configuration file", "additional propert",
                "is invalid", "unsupported")),
)  # fmt: skip

GATE_REFUSED = 126  # the gate's answer to a command outside its shapes: nothing ran

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_VERBS = (
    "Creating|Created|Recreate|Recreated|Starting|Started|Stopping|Stopped|Running|Removing|Removed|"
    "Pulling|Pulled|Waiting|Healthy|Restarting|Restarted|Building|Built|Skipped"
)
_PROGRESS = re.compile(rf"\s*(?:(Container|Network|Volume) \"?({_NAME})\"?|({_NAME}))\s+({_VERBS})\s*")
MAX_PROGRESS = 100
PROGRESS_LINE = re.compile(rf"(?:(?:Container|Network|Volume) )?{_NAME} (?:{_VERBS})")


def progress(stdout: str, stderr: str) -> list[str]:
    """Compose's progress lines (`Container core-web-1 Started`), rebuilt from the
    matched names and verb: a line that is anything else is not kept at all."""
    kept: list[str] = []
    for line in (stderr + "\n" + stdout).splitlines():
        m = _PROGRESS.fullmatch(line)
        if m is None:
            continue
        kind, name, bare, verb = m.groups()
        rebuilt = f"{kind} {name} {verb}" if kind else f"{bare} {verb}"
        if not kept or kept[-1] != rebuilt:
            kept.append(rebuilt)
    return kept[-MAX_PROGRESS:]


def error_class(returncode: int | None, timed_out: bool, stdout: str, stderr: str) -> ErrorClass | None:
    """Why a command failed, in the fixed vocabulary; None when it succeeded."""
    if timed_out:
        return "timeout"
    if returncode == 0:
        return None
    if returncode == GATE_REFUSED:
        return "gate"
    text = (stderr + "\n" + stdout).lower()
    for name, needles in _CLASSES:
        if any(needle in text for needle in needles):
            return name
    return "unknown"


def digest(stdout: str, stderr: str) -> tuple[int, str]:
    """(byte count, SHA-256) of the output: enough to tell two runs' output apart, never to read it."""
    data = stdout.encode("utf-8", "surrogateescape") + b"\0" + stderr.encode("utf-8", "surrogateescape")
    return len(data) - 1, hashlib.sha256(data).hexdigest()


def failure(returncode: int | None, timed_out: bool, stdout: str, stderr: str) -> str:
    """How a command failed, in words a record may keep: `exited 1 (image)`; its output
    stays on the host."""
    if timed_out:
        return "timed out"
    return f"exited {returncode} ({error_class(returncode, timed_out, stdout, stderr)})"
