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

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

ErrorClass = Literal[
    "gate", "timeout", "env_file", "interpolation", "image", "port", "build", "permission", "engine", "config",
    "unknown",
]  # fmt: skip

# Lower-cased needles, first match wins: the specific causes before the broad ones.
# host/platform_agent.py keeps the same list (the agent classifies on the host).
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


RUN_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# A version as docker and compose print them (`27.3.1`, `2.29.7-desktop.1`): host/platform_agent.py's VERSION.
VERSION_PATTERN = r"^[0-9]{1,5}(\.[0-9]{1,5}){1,3}([-+~][0-9A-Za-z.+~-]{1,40})?$"
AgentVerb = Literal["apply", "health", "rollback", "release", "check"]


class ContainerFacts(BaseModel):
    """One container of the service, as the agent's `health` saw it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    state: Literal["created", "running", "paused", "restarting", "removing", "exited", "dead", "unknown"]
    health: Literal["", "starting", "healthy", "unhealthy", "unknown"]
    exit_code: int | None = Field(default=None, ge=0, le=255)
    restart_count: int | None = Field(default=None, ge=0)


class LeaseFacts(BaseModel):
    """A lease held on the host, as the agent's `check` lists it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    project: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,127}$")
    run: str = Field(pattern=RUN_PATTERN)
    step: Literal["apply", "health", "rollback"] | None = None
    expires_in: int = Field(ge=0)


class AgentAnswer(BaseModel):
    """The host agent's answer to one verb, read as typed facts: a field that does
    not fit its type makes the whole answer unreadable, and nothing of it is kept."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # a newer agent may say more

    agent: int = Field(ge=0)
    verb: AgentVerb
    run: str | None = Field(default=None, pattern=RUN_PATTERN)
    answer: Literal[
        "ran", "busy", "interrupted", "run_conflict", "refused", "lease_lost",
        "observed", "unobserved", "released", "checked",
    ]  # fmt: skip
    # ran (apply, rollback)
    returncode: int | None = Field(default=None, ge=-1, le=255)
    timed_out: StrictBool = False
    duration_s: float = Field(default=0.0, ge=0)
    error_class: ErrorClass | None = None
    progress: list[str] = Field(default_factory=list, max_length=MAX_PROGRESS)
    output_bytes: int = Field(default=0, ge=0)
    output_sha256: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    replayed: StrictBool = False
    lease_ttl: int | None = Field(default=None, ge=1)
    image_id: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    synced: StrictBool = False  # the agent checked out the approved commit first (sync_checkout)
    # busy, lease_lost
    holder: str | None = Field(default=None, pattern=RUN_PATTERN)
    busy_with: Literal["project", "checkout"] | None = None  # checkout: a sync or a compose up of another project
    held_s: int | None = Field(default=None, ge=0)  # agent v2
    expires_in: int | None = Field(default=None, ge=0)
    # observed (health)
    lease: Literal["held", "retaken", "none"] | None = None
    containers: list[ContainerFacts] = Field(default_factory=list, max_length=100)
    logs_kept: int = Field(default=0, ge=0, le=100)  # failing containers whose logs the host kept
    # released, checked
    released: int | None = Field(default=None, ge=0)
    leases: list[LeaseFacts] = Field(default_factory=list, max_length=1000)
    sync_allowed: StrictBool | None = None  # v4: the forced command says --allow-sync
    # checked with --prerequisites (v4): what applies need of the host
    docker: Literal["ok", "missing", "permission", "engine", "unknown"] | None = None
    engine_version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    compose_version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    docker_group: StrictBool | None = None  # None: the host has no group docker
    sync_remote: StrictBool | None = None  # the checkout has a remote to fetch from (hosts allowing sync)
    # refused
    reason: Literal[
        "checkout", "compose_config", "host_storage", "not_applied", "no_snapshot", "undefined_service",
        "sync_not_allowed", "sync_dirty", "sync_unreachable", "sync_failed",
    ] | None = None  # fmt: skip
    head: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$")
    dirty: StrictBool = False
    fetched: StrictBool | None = None  # sync_unreachable: whether `git fetch` itself succeeded

    @field_validator("progress")
    @classmethod
    def _template_only(cls, lines: list[str]) -> list[str]:
        return [line for line in lines if PROGRESS_LINE.fullmatch(line)]


class UnreadableAnswer(ValueError):
    """The agent's answer is not the typed facts it must be; its text is never repeated."""


def agent_answer(stdout: str, run: str | None, verb: AgentVerb = "apply") -> AgentAnswer:
    """The agent's one JSON line, to `verb` for this run, or UnreadableAnswer."""
    try:
        answer = AgentAnswer.model_validate_json(stdout.strip())
    except ValidationError:
        raise UnreadableAnswer("the host agent's answer is not the facts the protocol allows") from None
    if answer.verb != verb:
        raise UnreadableAnswer(f"the host agent answered another verb than {verb}")
    if answer.run != run:
        raise UnreadableAnswer("the host agent answered for another run")
    return answer
