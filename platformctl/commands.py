"""Every command this worker can ever send to a host, built in one place.

A command is an argument vector; it is rendered with shell quoting for every
part, because SSH hands the string to the remote user's shell. Each builder
re-checks its parts, so nothing but these shapes can reach a host even if a
caller skipped a policy check.

A command may carry bytes for the remote program's standard input (today only
the image rollback's pin); they are sent after the command, then EOF, and are
never part of the rendered command.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass

SERVICE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# host/platform-gate refuses a longer standard input (it reads at most this).
PIN_MAX_BYTES = 4096
# host/platform-gate's exit status for a command it does not allow (nothing ran).
GATE_REFUSED = 126
# The host agent protocol this worker speaks (host/platform_agent.py's PROTOCOL), and
# the oldest whose answers it still reads: a run whose compose up ran on a v2 agent
# (no lease, `health` or `rollback`) is watched and rolled back as v2 allowed. v4 adds
# `apply ... --sync` (asked only of hosts that opt in) and `check --prerequisites`; v5
# `apply ... --action recreate|restart` (sent only for those actions).
AGENT_PROTOCOL = 5
MIN_AGENT_PROTOCOL = 2
LEASE_PROTOCOL, SYNC_PROTOCOL, ACTION_PROTOCOL = 3, 4, 5  # the first with `--lease`, `--sync`, `--action`
# A plan action's `apply` flag: create/update send none, so a gate older than v5 still runs
# them; the values are fixed here and in the gate, never taken from input.
ACTION_FLAGS: dict[str, tuple[str, ...]] = {
    "create": (), "update": (), "recreate": ("--action", "recreate"), "restart": ("--action", "restart"),
}  # fmt: skip
# How long the agent lets `git fetch` run before a synced compose up (its own cap is the same).
SYNC_FETCH_TIMEOUT_S = 60
RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SHA = re.compile(r"[0-9a-f]{40}")
# The longest compose up the agent runs (its own cap is the same).
MAX_UP_TIMEOUT_S = 3600


class UnsafeCommand(ValueError):
    """A builder was handed a part that must never reach a host."""


@dataclass(frozen=True)
class RemoteCommand:
    kind: str
    argv: tuple[str, ...]
    stdin: bytes | None = None  # sent to the program, then EOF; None: EOF at once

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


# What the host agent runs for a plan's action (host/platform_agent.py holds the same table).
ACTION_ARGS: dict[str, tuple[str, ...]] = {
    "create": ("up", "-d"), "update": ("up", "-d"),
    "recreate": ("up", "-d", "--force-recreate", "--no-deps"), "restart": ("restart",),
}


def compose_action(compose_path: str, service: str, action: str) -> RemoteCommand:
    """The compose command the agent's `apply` runs for `action`: shown to operators; sent only
    through `agent_apply`."""
    args = ACTION_ARGS.get(action)
    if args is None:
        raise UnsafeCommand(f"no compose command for action {action[:40]!r}")
    return RemoteCommand(
        "compose_up", ("docker", "compose", "-f", _compose_file(compose_path), *args, _service(service))
    )


def compose_ps(compose_path: str, service: str) -> RemoteCommand:
    """Read-only: the service's containers, stopped ones included (without --all
    compose lists no exited container, and a crashed service looks absent)."""
    return RemoteCommand(
        "compose_ps",
        ("docker", "compose", "-f", _compose_file(compose_path), "ps", "--all", "--format", "json", _service(service)),
    )


def compose_ps_running(compose_path: str, service: str) -> RemoteCommand:
    """`compose_ps` without --all: the one shape a gate installed before --all
    allows, asked only after such a gate refused `compose_ps` (exit 126)."""
    return RemoteCommand(
        "compose_ps",
        ("docker", "compose", "-f", _compose_file(compose_path), "ps", "--format", "json", _service(service)),
    )


def git_head(remote_root: str) -> RemoteCommand:
    """Read-only: which commit the host's checkout holds."""
    return RemoteCommand("git_head", ("git", "-C", _absolute_path(remote_root), "rev-parse", "HEAD"))


def compose_images(compose_path: str, service: str) -> RemoteCommand:
    """Read-only: the image ID each of the service's containers runs."""
    return RemoteCommand(
        "compose_images",
        ("docker", "compose", "-f", _compose_file(compose_path), "images", "--format", "json", _service(service)),
    )


def image_pin(service: str, image_id: str) -> bytes:
    """The compose override that pins one service to one image, by ID: the
    only standard input the host gate accepts, byte for byte."""
    if not IMAGE_ID.fullmatch(image_id):
        raise UnsafeCommand(f"not an image ID (sha256:<64 lowercase hex>): {image_id!r}")
    pin = json.dumps({"services": {_service(service): {"image": image_id}}}, separators=(",", ":")).encode("ascii")
    if len(pin) > PIN_MAX_BYTES:
        raise UnsafeCommand(f"image pin longer than {PIN_MAX_BYTES} bytes (service name of {len(service)} chars)")
    return pin


def compose_rollback(compose_path: str, service: str, image_id: str) -> RemoteCommand:
    """Put `service` back on the image `image_id`, touching nothing else: the
    pin on standard input (`-f -`) overrides its image; no dependencies, no
    build, no pull (the image must still be on the host)."""
    return RemoteCommand(
        "compose_rollback",
        (
            "docker", "compose", "-f", _compose_file(compose_path), "-f", "-",
            "up", "-d", "--no-deps", "--no-build", "--pull", "never", _service(service),
        ),
        stdin=image_pin(service, image_id),
    )


def _run_id(run_id: str) -> str:
    if not RUN_ID.fullmatch(run_id):
        raise UnsafeCommand(f"not a workflow run id (lowercase UUID): {run_id!r}")
    return run_id


def agent_apply(
    run_id: str,
    timeout_s: int,
    compose_path: str,
    service: str,
    sha: str | None,
    *,
    sync: bool = False,
    action: str = "update",
) -> RemoteCommand:
    """The host agent's `apply` verb: under the compose project's lock on the host,
    at most once per run id, the checkout checked at `sha` (None: the host opted
    out of verify_checkout), then `docker compose -f FILE up -d SERVICE` detached
    from the SSH channel, the project's lease taken first (`--lease`: a v2 gate, which
    has no lease, refuses the shape). With `sync` (`--sync`, hosts with sync_checkout),
    the agent first fetches from the checkout's own remote and checks out `sha`, where
    the host's admin allows it; a gate older than v4 refuses the shape. `action` (the plan's)
    `recreate` adds `--action recreate` (`up -d --force-recreate --no-deps SERVICE` on the host),
    `restart` adds `--action restart` (`restart SERVICE`); a gate older than v5 refuses both.
    It answers one JSON line of facts; the output stays on the host."""
    flags = ACTION_FLAGS.get(action) if isinstance(action, str) else None
    if flags is None:
        raise UnsafeCommand(f"no host agent shape for action {str(action)[:40]!r}")
    if not (isinstance(timeout_s, int) and 0 < timeout_s <= MAX_UP_TIMEOUT_S):
        raise UnsafeCommand(f"compose up timeout must be 1..{MAX_UP_TIMEOUT_S} seconds: {timeout_s!r}")
    if sha is not None and not SHA.fullmatch(sha):
        raise UnsafeCommand(f"not a commit SHA (40 lowercase hex): {sha!r}")
    if sync and sha is None:
        raise UnsafeCommand("a synced apply needs the commit SHA to check out")
    return RemoteCommand(
        "compose_up",
        (
            "platform-agent", "apply", _run_id(run_id), str(timeout_s), _compose_file(compose_path),
            _service(service), sha or "-", "--lease", *(("--sync",) if sync else ()), *flags,
        ),
    )  # fmt: skip


def agent_health(run_id: str, compose_path: str, service: str) -> RemoteCommand:
    """One look at the service's containers, stopped ones included; for a run that
    applied, it renews the project's lease on the host. Kind `compose_ps`: the same step."""
    return RemoteCommand(
        "compose_ps", ("platform-agent", "health", _run_id(run_id), _compose_file(compose_path), _service(service))
    )


def agent_rollback(run_id: str, timeout_s: int, compose_path: str, service: str) -> RemoteCommand:
    """Put `service` back on the image the agent recorded before this run's compose
    up (never an ID from here), under the run's lease, at most once."""
    if not (isinstance(timeout_s, int) and 0 < timeout_s <= MAX_UP_TIMEOUT_S):
        raise UnsafeCommand(f"compose up timeout must be 1..{MAX_UP_TIMEOUT_S} seconds: {timeout_s!r}")
    return RemoteCommand(
        "compose_rollback",
        ("platform-agent", "rollback", _run_id(run_id), str(timeout_s), _compose_file(compose_path), _service(service)),
    )


def agent_release(run_id: str) -> RemoteCommand:
    """Free the project lease this run holds on the host."""
    return RemoteCommand("agent_release", ("platform-agent", "release", _run_id(run_id)))


def agent_check(*, prerequisites: bool = False) -> RemoteCommand:
    """Read-only: the agent's protocol version and the leases it holds; with `prerequisites`
    (v4, for `doctor`), also what applies need of the host, as facts."""
    return RemoteCommand("agent_check", ("platform-agent", "check", *(("--prerequisites",) if prerequisites else ())))


def agent_logs(run_id: str) -> RemoteCommand:
    """Read-only: the raw output the host agent kept for one run, for the operator's screen only."""
    return RemoteCommand("agent_logs", ("platform-agent", "logs", _run_id(run_id)))
