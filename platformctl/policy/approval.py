"""Step 2: is this approval for exactly this plan, and enough for its actions?

With a signing key, an approval counts only when CI signed it: the signature
is the hex HMAC-SHA256 over the compact, key-sorted JSON of {module,
approved_sha, approved_pr, approved_by, allow_destructive, expires_at,
plan_digest}, so access to the Temporal namespace alone cannot approve an
apply, and a signature approves one plan, never another plan of that module
and SHA.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

from platformctl.models import DESTRUCTIVE_ACTIONS, Approval, Plan
from platformctl.outcomes import ApprovalMismatch, DestructiveNeedsApproval
from platformctl.policy.plan import SHA, is_destructive


def signing_payload(module: str, approval: Approval) -> bytes:
    """The exact bytes CI signs: absent fields as null, allow_destructive as false."""
    fields = {
        "module": module,
        "approved_sha": approval.approved_sha,
        "approved_pr": approval.approved_pr,
        "approved_by": approval.approved_by,
        "allow_destructive": approval.allow_destructive,
        "expires_at": approval.expires_at,
        "plan_digest": approval.plan_digest,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def sign(key: bytes, module: str, approval: Approval) -> str:
    return hmac.new(key, signing_payload(module, approval), hashlib.sha256).hexdigest()


def _expiry(approval: Approval) -> datetime | None:
    if approval.expires_at is None:
        return None
    try:
        at = datetime.fromisoformat(approval.expires_at)
    except ValueError:
        raise ApprovalMismatch(f"approval expires_at is not an ISO-8601 time: {approval.expires_at[:64]!r}") from None
    if at.utcoffset() is None:
        raise ApprovalMismatch("approval expires_at must carry a time zone (UTC, e.g. 2026-11-27T12:00:00Z)")
    try:
        return at.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is past the last datetime in UTC
        raise ApprovalMismatch(f"approval expires_at is out of range: {approval.expires_at[:64]!r}") from None


def check_signature(key: bytes | None, module: str, approval: Approval, now: datetime) -> None:
    """Raise ApprovalMismatch for an expired approval, or one not signed with `key`."""
    expiry = _expiry(approval)
    if expiry is not None and now >= expiry:
        raise ApprovalMismatch(f"approval expired at {expiry.isoformat()}")
    if key is None:
        return
    if not approval.signature:
        raise ApprovalMismatch("approval is not signed, and this worker accepts only signed approvals")
    # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, not a mismatch).
    if not hmac.compare_digest(approval.signature.lower().encode(), sign(key, module, approval).encode()):
        raise ApprovalMismatch("approval signature does not match: not signed with this worker's key, or altered")


def check_binding(approval: Approval, digest: str | None, *, signed: bool) -> None:
    """Raise unless `approval` names the plan whose plan_digest is `digest` (None: an
    activity scheduled before the digest was sent). `signed`: the worker has a signing
    key, so an approval must name its plan: one signed without does not count."""
    if approval.plan_digest is None:
        if signed:
            raise ApprovalMismatch(
                "approval predates plan binding (no plan_digest): approve once more, signing from the plan file"
            )
    elif approval.plan_digest != digest:
        raise ApprovalMismatch(
            f"approval is for plan digest {approval.plan_digest[:64]!r}, but this apply's plan has {digest!r}: "
            "it approves another plan"
        )


def check_approval(plan: Plan, approval: Approval, digest: str, *, signed: bool = False) -> None:
    """Raise unless `approval` approves `plan` (whose plan_digest is `digest`)."""
    check_binding(approval, digest, signed=signed)
    if not SHA.fullmatch(approval.approved_sha) or approval.approved_sha != plan.source_sha:
        raise ApprovalMismatch(
            f"approval is for {approval.approved_sha[:64]!r}, but the plan is for {plan.source_sha[:64]!r}"
        )
    if approval.approved_pr is None or approval.approved_pr <= 0:
        raise ApprovalMismatch(f"approval names no usable pull request number (got {approval.approved_pr!r})")
    if is_destructive(plan) and not approval.allow_destructive:
        actions = sorted({c.action for c in plan.changes if c.action in DESTRUCTIVE_ACTIONS})
        raise DestructiveNeedsApproval(
            f"plan has destructive actions {actions}: the approval must set allow_destructive"
        )
