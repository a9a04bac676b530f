"""The contract's outcome table: status -> exit code and error type.

Errors raised by policy code carry their contract error type, so an activity
can turn any of them into a non-retryable ApplicationError of that type and
the workflow can map the type back to a status.
"""

from __future__ import annotations

from typing import NamedTuple


class Outcome(NamedTuple):
    exit_code: int
    error_type: str | None  # None: the workflow completes instead of failing


OUTCOMES: dict[str, Outcome] = {
    "no_changes": Outcome(0, None),
    "dry_run": Outcome(0, None),
    "applied": Outcome(9, None),
    "tool_error": Outcome(2, "ToolError"),
    "blocked": Outcome(3, "PolicyViolation"),
    "remote_failed": Outcome(4, "RemoteFailed"),
    "unhealthy": Outcome(4, "Unhealthy"),
    "approval_mismatch": Outcome(5, "ApprovalMismatch"),
    "approval_expired": Outcome(5, "ApprovalExpired"),
    "rejected": Outcome(5, "ApplyRejected"),
    "destructive_needs_approval": Outcome(6, "DestructiveNeedsApproval"),
    # Closes as Canceled in Temporal's terms, so it has no ApplicationError type.
    "cancelled": Outcome(5, None),
}

SUCCESS = frozenset({"applied", "no_changes", "dry_run"})

STATUS_BY_ERROR_TYPE = {o.error_type: s for s, o in OUTCOMES.items() if o.error_type}


class ApplyError(Exception):
    """A reason to stop the apply, with its contract status."""

    status = "tool_error"

    @property
    def error_type(self) -> str:
        return OUTCOMES[self.status].error_type  # type: ignore[return-value]


class ToolError(ApplyError):
    status = "tool_error"


class PolicyViolation(ApplyError):
    status = "blocked"


class RemoteFailed(ApplyError):
    status = "remote_failed"


class Unhealthy(ApplyError):
    status = "unhealthy"


class ApprovalMismatch(ApplyError):
    status = "approval_mismatch"


class ApprovalExpired(ApplyError):
    status = "approval_expired"


class DestructiveNeedsApproval(ApplyError):
    status = "destructive_needs_approval"
