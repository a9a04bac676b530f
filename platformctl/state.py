"""Durable records on the worker's disk: per-module status and the audit log.

Each record on disk has one model here, and one function builds it from the
activity's input, so the applied path and the rollback cannot drift apart:

- `StatusRecord`, `$STATE_DIR/modules/<id>.status.json`: the module's last
  good apply, plus `last_failure` after a failed one. Replaced atomically
  (write, fsync, rename, fsync the folder) so a crash leaves either the old
  record or the new one, never half of each.
- `AuditLine`, one line of `$STATE_DIR/audit.jsonl` per apply outcome. A line
  never joins another: a short write is truncated back and raised, and a line
  appended after a torn one starts on a line of its own. A run's outcome gets
  one line however often its activity runs (a crash re-runs a local activity
  on the next worker): a line of the same run and status is not written again.

Nothing is written outside the state dir: a status path is built only from a
module id matching `MODULE_ID`, and every path must resolve inside the
resolved state dir (a symlink out of it is refused), else PolicyViolation.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from platformctl.config import MODULE_ID
from platformctl.models import (
    ContainerImage,
    PersistStateInput,
    RedactedText,
    RollbackInput,
    RollbackRecord,
    brief_errors,
)
from platformctl.outcomes import PolicyViolation, ToolError

AUDIT_FILE = "audit.jsonl"
MODULES_DIR = "modules"
# How far back a run looks for its own line. It is recorded again only after a crash, when
# the next worker replays it, so its line is among the last ones: 256 KiB is ~300 lines of
# applies, searched in ~0.1 ms, twice per outcome.
AUDIT_TAIL_BYTES = 256 * 1024


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Record(BaseModel):
    # Unknown keys (a newer worker's) are ignored on read, as elsewhere.
    model_config = ConfigDict(extra="ignore")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ---- status file ------------------------------------------------------------


class FailureRecord(_Record):
    """The last failed apply of a module (`rollback` is None when it ended before compose up)."""

    at: str
    status: str
    source_sha: str | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    error: RedactedText | None = None
    approved_by: RedactedText | None = None
    approved_pr: int | None = None
    plan_digest: str | None = None
    snapshot: list[ContainerImage] | None = None  # the images before compose up
    rollback: RollbackRecord | None = None


class StatusRecord(_Record):
    """`modules/<id>.status.json`: the last good apply and the latest outcome.

    `status` is the latest outcome; the `last_apply_*`, `plan_digest`,
    `applied_at`, `workflow_id`, `run_id`, `command`, `approved_by` and
    `checkout_verified` fields always describe the last *applied* run, even
    when `status` is a failure (then `last_failure` says what went wrong).
    """

    module: str
    host: str | None = None
    compose_service: str | None = None
    last_apply_sha: str | None = None
    last_apply_pr: int | None = None
    plan_digest: str | None = None
    applied_at: str | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    status: str
    command: RedactedText | None = None
    approved_by: RedactedText | None = None
    # False: the host opted out of verify_checkout, the SHA was not confirmed there.
    checkout_verified: bool | None = None
    # The images the last applied run left running (the module's last good images),
    # and those it replaced.
    images: list[ContainerImage] | None = None
    images_before: list[ContainerImage] | None = None
    last_failure: FailureRecord | None = None

    @classmethod
    def applied(cls, inp: PersistStateInput, at: str) -> StatusRecord:
        result = inp.result
        if result.module is None:
            raise PolicyViolation("an applied outcome names no module")
        return cls(
            module=result.module,
            host=result.host,
            compose_service=result.compose_service,
            last_apply_sha=inp.source_sha,
            last_apply_pr=inp.approved_pr,
            plan_digest=inp.plan_digest,
            applied_at=at,
            workflow_id=inp.workflow_id,
            run_id=inp.run_id,
            status=result.status,
            command=result.command,
            approved_by=inp.approved_by,
            checkout_verified=result.checkout_verified,
            images=result.images.images if result.images else None,
            images_before=result.snapshot.images if result.snapshot else None,
            last_failure=None,
        )

    @classmethod
    def after_failure(
        cls,
        previous: StatusRecord | None,
        inp: RollbackInput | PersistStateInput,
        rollback: RollbackRecord | None,
        at: str,
    ) -> StatusRecord:
        """The previous record's last good apply, with this failure as `status` and `last_failure`
        (`rollback`: what the rollback step did, None for a failure before compose up)."""
        result = inp.result
        if result.module is None:
            raise PolicyViolation("a failed outcome names no module")
        good = previous or cls(module=result.module, status=result.status)
        return cls(
            module=result.module,
            host=result.host,
            compose_service=result.compose_service,
            last_apply_sha=good.last_apply_sha,
            last_apply_pr=good.last_apply_pr,
            plan_digest=good.plan_digest,
            applied_at=good.applied_at,
            workflow_id=good.workflow_id,
            run_id=good.run_id,
            status=result.status,
            command=good.command,
            approved_by=good.approved_by,
            checkout_verified=good.checkout_verified,
            images=good.images,
            images_before=good.images_before,
            last_failure=FailureRecord(
                at=at,
                status=result.status,
                source_sha=inp.source_sha,
                workflow_id=inp.workflow_id,
                run_id=inp.run_id,
                error=result.error,
                approved_by=inp.approved_by,
                approved_pr=inp.approved_pr,
                plan_digest=inp.plan_digest,
                snapshot=result.snapshot.images if result.snapshot else None,
                rollback=rollback,
            ),
        )

    def has_failure_of(self, inp: RollbackInput) -> bool:
        """Whether this record already holds `inp`'s failure: the rollback record ran for that
        run and status before (without a run id, runs of one workflow id cannot be told apart)."""
        failure = self.last_failure
        if failure is None or inp.run_id is None:
            return False
        return (failure.workflow_id, failure.run_id, failure.status) == (inp.workflow_id, inp.run_id, inp.result.status)


# ---- audit line ---------------------------------------------------------------


class AuditLine(_Record):
    """One line of `audit.jsonl`: one apply outcome, whatever it is."""

    at: str
    workflow_id: str
    run_id: str | None = None
    module: RedactedText | None = None  # as given: may be garbage from a blocked input
    host: str | None = None
    status: str
    exitCode: int
    source_sha: str | None = None
    approved_pr: int | None = None
    approved_by: RedactedText | None = None
    rejected_by: RedactedText | None = None
    plan_digest: str | None = None
    command: RedactedText | None = None
    error: RedactedText | None = None
    checkout_verified: bool | None = None
    rollback: RollbackRecord | None = None
    snapshot: list[ContainerImage] | None = None
    images: list[ContainerImage] | None = None
    reason: RedactedText | None = None  # an operator's rollback: why

    @classmethod
    def of(cls, inp: PersistStateInput, at: str) -> AuditLine:
        result = inp.result
        return cls(
            at=at,
            workflow_id=inp.workflow_id,
            run_id=inp.run_id,
            module=result.module,
            host=result.host,
            status=result.status,
            exitCode=result.exitCode,
            source_sha=inp.source_sha,
            approved_pr=inp.approved_pr,
            approved_by=inp.approved_by,
            rejected_by=inp.rejected_by,
            plan_digest=inp.plan_digest,
            command=result.command,
            error=result.error,
            checkout_verified=result.checkout_verified,
            rollback=result.rollback,
            snapshot=result.snapshot.images if result.snapshot else None,
            images=result.images.images if result.images else None,
        )


# ---- paths ------------------------------------------------------------------------


def _inside(state_dir: Path, path: Path) -> Path:
    """`path`, if it resolves (symlinks followed) inside the resolved state dir."""
    root = state_dir.resolve()
    if not path.resolve().is_relative_to(root):
        raise PolicyViolation(f"refusing to write {path.name!r}: it resolves outside the state dir")
    return path


def status_path(state_dir: Path, module: Any) -> Path:
    if not isinstance(module, str) or not MODULE_ID.fullmatch(module):
        shown = module[:80] if isinstance(module, str) else module
        raise PolicyViolation(f"no status file for module id {shown!r}: must match {MODULE_ID.pattern}")
    return _inside(state_dir, state_dir / MODULES_DIR / f"{module}.status.json")


def audit_path(state_dir: Path) -> Path:
    return _inside(state_dir, state_dir / AUDIT_FILE)


# ---- status: read and replace ---------------------------------------------------------


def read_status(state_dir: Path, module: str | None) -> StatusRecord | None:
    """The module's status record; None when it has none. A corrupt file raises ToolError;
    a module that is not a valid id (None: a result naming none) raises PolicyViolation."""
    path = status_path(state_dir, module)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return StatusRecord.model_validate_json(text)
    except ValidationError as e:
        raise ToolError(f"{MODULES_DIR}/{path.name} is unreadable: {brief_errors(e)}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_status(state_dir: Path, record: StatusRecord) -> Path:
    path = status_path(state_dir, record.module)
    path.parent.mkdir(parents=True, exist_ok=True)
    _inside(state_dir, path)  # again, now that the folders exist
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{record.module}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record.to_json(), f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


# ---- audit: append one whole line -----------------------------------------------------


class AuditWriteError(OSError):
    """The audit line was not written whole (what was written was truncated back)."""


def audit_has(state_dir: Path, line: AuditLine) -> bool:
    """Whether the log's tail holds a line of `line`'s run (workflow and run id) and status.

    Read without the lock, so it never waits: a line being written is not seen yet,
    and append_audit looks again under the lock before it writes. A log that cannot
    be opened (none yet, or no state dir) holds no line: writing to it says why.
    """
    path = audit_path(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return _holds(_tail(fd, os.fstat(fd).st_size), line)
    finally:
        os.close(fd)


def append_audit(state_dir: Path, line: AuditLine) -> bool:
    """Append one line, whole or not at all; False when the run's line for this outcome is there already.

    Appenders (threads or worker processes) take an exclusive flock on the file
    so looking for the run's line, checking the last byte, writing and
    truncating back are one step. A previous line left torn (no final newline)
    is ended first, so the new line stands alone; a short write is truncated
    back and raised.
    """
    path = audit_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(line.to_json(), sort_keys=True, separators=(",", ":")) + "\n").encode()
    # Read-write so the tail can be read through the same (locked) descriptor.
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if _holds(_tail(fd, size), line):
            return False
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        try:
            written = os.write(fd, data)
        except OSError:
            _truncate_back(fd, size, path)
            raise
        if written != len(data):
            _truncate_back(fd, size, path)
            raise AuditWriteError(
                f"short write to {AUDIT_FILE}: {written} of {len(data)} bytes (disk full?); "
                "the partial line was removed"
            )
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock
    if size == 0:
        _fsync_dir(path.parent)  # a new file's name is durable too
    return True


def _tail(fd: int, size: int) -> bytes:
    start = max(0, size - AUDIT_TAIL_BYTES)
    return os.pread(fd, size - start, start)


def _holds(tail: bytes, line: AuditLine) -> bool:
    if line.run_id is None:
        return False  # runs of one workflow id cannot be told apart: never a repeat
    # Lines are written with sorted keys and no spaces: only lines naming the run id are parsed.
    marker = b'"run_id":' + json.dumps(line.run_id).encode()
    if marker not in tail:
        return False
    key = (line.workflow_id, line.run_id, line.status)
    for raw in tail.split(b"\n"):
        if marker not in raw:
            continue
        try:
            seen = json.loads(raw)
        except ValueError:
            continue  # torn, or cut where the tail starts
        if isinstance(seen, dict) and (seen.get("workflow_id"), seen.get("run_id"), seen.get("status")) == key:
            return True
    return False


def _truncate_back(fd: int, size: int, path: Path) -> None:
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as e:
        raise AuditWriteError(
            f"a torn line may remain at the end of {AUDIT_FILE} (offset {size}): could not truncate it: {e}"
        ) from None


def display_path(path: Path, root: Path) -> str:
    """Relative to the platform root when inside it, as the contract shows."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
