"""Durable records on the worker's disk: per-module status and the audit log.

Status files are replaced atomically (write, fsync, rename, fsync the folder)
so a crash leaves either the old record or the new one, never half of each.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def status_path(state_dir: Path, module: str) -> Path:
    return state_dir / "modules" / f"{module}.status.json"


def read_status(state_dir: Path, module: str) -> dict[str, Any] | None:
    try:
        return json.loads(status_path(state_dir, module).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_status(state_dir: Path, module: str, record: dict[str, Any]) -> Path:
    path = status_path(state_dir, module)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{module}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def append_audit(state_dir: Path, entry: dict[str, Any]) -> Path:
    path = state_dir / "audit.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
    # One O_APPEND write per line: concurrent appenders never interleave lines.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def display_path(path: Path, root: Path) -> str:
    """Relative to the platform root when inside it, as the contract shows."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
