"""Which modules a re-apply may apply again, and what compose's progress says about drift.

A re-apply never applies content that was not approved: only a module's last
successfully applied SHA, with the approval it was applied with, on a host
that verifies its checkout.
"""

from __future__ import annotations

from typing import Any

from platformctl.models import ReapplyCandidate

# What `docker compose up -d` prints for a container it had to change; an
# unchanged one is only "Running".
_CHANGED = ("Recreate", "Creat", "Start", "Restart", "Pull")


def skip_reason(c: ReapplyCandidate) -> str | None:
    """Why this module is not re-applied, or None when it may be."""
    if c.state is None or c.state.last_applied is None:
        return "no successful apply recorded"
    last = c.state.last_applied
    if last.plan.module != c.module:
        # Only a forged record says so; its plan would go to that module's host, unchecked here.
        return f"the recorded apply is a plan for module {last.plan.module[:100]!r}, not this one"
    if last.approval.plan_digest is None or last.plan_raw is None:
        # Never sent again in the old form: that would take a signature back to what it no longer covers.
        return "approval predates plan binding: approve once more"
    pin = c.state.pinned
    if pin is not None:
        return (
            f"pinned by the rollback {pin.workflow_id} ({pin.by}: {pin.reason[:200]}): "
            "re-apply resumes after the next approved apply"
        )
    failed = c.state.last_failure
    if failed is not None and failed.sha == last.sha:
        return f"the last apply of {last.sha[:12]} failed ({failed.status}): fix it with a new apply"
    if not c.verify_checkout:
        return f"host {c.host} does not verify its checkout (verify_checkout: false)"
    return None


def drifted(result: dict[str, Any]) -> bool:
    """True when compose had to create, recreate or start a container, or the
    service's images after the apply differ from those before (an ApplyResult)."""
    before, after = result.get("snapshot"), result.get("images")
    if isinstance(before, dict) and isinstance(after, dict) and _ids(before) != _ids(after):
        return True
    remote = result.get("remote") or {}
    # Compose's progress lines; an apply from before they were kept has its stderr.
    lines = remote.get("progress") or str(remote.get("stderr") or "").splitlines()
    return _compose_changed(lines)


def _ids(snapshot: dict[str, Any]) -> set[Any]:
    return {i.get("image_id") for i in snapshot.get("images") or [] if isinstance(i, dict)}


def _compose_changed(lines: list[str]) -> bool:
    return any(
        word in line for line in lines if isinstance(line, str) and line.lstrip().startswith("Container")
        for word in _CHANGED
    )
