"""The contract's outcome table: status -> exit code and error type.

Errors raised by policy code carry their contract error type, so an activity
can turn any of them into a non-retryable ApplicationError of that type and
the workflow can map the type back to a status.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

# Every status an apply can end with (the contract's outcome table, below).
Status = Literal[
    "no_changes",
    "dry_run",
    "applied",
    "tool_error",
    "blocked",
    "remote_failed",
    "unhealthy",
    "approval_mismatch",
    "approval_expired",
    "rejected",
    "destructive_needs_approval",
    "cancelled",
]


class Outcome(NamedTuple):
    exit_code: int
    error_type: str | None  # None: the workflow completes instead of failing


OUTCOMES: dict[Status, Outcome] = {
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

SUCCESS: frozenset[Status] = frozenset({"applied", "no_changes", "dry_run"})

# The failing statuses: each fails the workflow with its own ApplicationError type.
ERROR_TYPE_BY_STATUS: dict[Status, str] = {s: o.error_type for s, o in OUTCOMES.items() if o.error_type}
STATUS_BY_ERROR_TYPE: dict[str, Status] = {t: s for s, t in ERROR_TYPE_BY_STATUS.items()}


class ApplyError(Exception):
    """A reason to stop the apply, with its contract status."""

    status: Status = "tool_error"

    @property
    def error_type(self) -> str:
        return ERROR_TYPE_BY_STATUS[self.status]


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
