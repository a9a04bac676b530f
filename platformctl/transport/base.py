"""The one transport protocol: run a built command on an allowlisted host."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from platformctl.commands import RemoteCommand
from platformctl.models import HostConfig


@dataclass(frozen=True)
class RemoteOutput:
    """Raw output. It may hold secrets: it never leaves an activity unredacted."""

    returncode: int | None  # None when the command was killed at its timeout
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False


class TransportError(Exception):
    """Nothing (or not all) ran because the host could not be reached."""

    retryable = True


class ConnectFailed(TransportError):
    """Refused, unreachable or timed out while connecting: may pass."""


class HostKeyMismatch(TransportError):
    """The host did not present the pinned key: fail closed, never retry."""

    retryable = False


class AuthenticationFailed(TransportError):
    """The host refused our key: retrying cannot fix it."""

    retryable = False


class Transport(Protocol):
    async def run(self, host: HostConfig, command: RemoteCommand, *, timeout_s: float) -> RemoteOutput:
        """Run `command` on `host`; kill it on the host after `timeout_s`.
        Its standard input is `command.stdin` then EOF, or EOF at once when that is None."""
        ...

    async def close(self) -> None: ...
