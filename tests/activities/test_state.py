"""State records: atomic status files and an append-only audit log."""

from __future__ import annotations

import json
import os
import threading

import pytest

from platformctl import state as state_module
from platformctl.outcomes import PolicyViolation
from platformctl.state import (
    AuditLine,
    StatusRecord,
    append_audit,
    audit_has,
    display_path,
    read_status,
    status_path,
    write_status,
)

BAD_MODULE_IDS = ["../escape", "a/b", "..", "", "Redis", "-lead", "x" * 64, "ok\n", None]


def status(sha: str, module: str = "redis") -> StatusRecord:
    return StatusRecord(
        module=module, status="applied", last_apply_sha=sha, run_id="run-1", command="docker compose up"
    )


def line(**over) -> AuditLine:
    return AuditLine(
        **{"at": "2025-01-01T00:00:00+00:00", "workflow_id": "wf", "status": "applied", "exitCode": 9, **over}
    )


def audit_text(state_dir) -> str:
    return (state_dir / "audit.jsonl").read_text()


def test_status_is_replaced_whole_and_leaves_no_temp_files(tmp_path):
    write_status(tmp_path, status("a" * 40))
    write_status(tmp_path, status("b" * 40))
    assert read_status(tmp_path, "redis") == status("b" * 40)
    assert [p.name for p in status_path(tmp_path, "redis").parent.iterdir()] == ["redis.status.json"]


def test_status_file_keeps_the_contract_keys_and_reads_back_as_the_model(tmp_path):
    path = write_status(tmp_path, status("a" * 40))
    on_disk = json.loads(path.read_text())
    assert set(on_disk) >= {
        "module", "host", "compose_service", "last_apply_sha", "last_apply_pr", "plan_digest",
        "applied_at", "workflow_id", "run_id", "status", "command", "approved_by",
        "checkout_verified", "last_failure",
    }
    record = read_status(tmp_path, "redis")
    assert isinstance(record, StatusRecord) and record.run_id == "run-1"


def test_missing_status_reads_as_none(tmp_path):
    assert read_status(tmp_path, "never-applied") is None


def test_concurrent_audit_appends_never_interleave(tmp_path):
    def writer(n: int) -> None:
        for i in range(50):
            append_audit(tmp_path, line(workflow_id=f"w{n}-{i}", error="x" * 2000))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = audit_text(tmp_path).splitlines()
    assert len(lines) == 200
    assert {e["workflow_id"] for e in map(json.loads, lines)} == {f"w{n}-{i}" for n in range(4) for i in range(50)}


def test_a_short_audit_write_raises_and_leaves_no_torn_line(tmp_path, monkeypatch):
    append_audit(tmp_path, line(workflow_id="before"))
    before = audit_text(tmp_path)
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        return real_write(fd, data[:7])  # the kernel took only part of the line

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="short write"):
        append_audit(tmp_path, line(workflow_id="torn"))
    assert audit_text(tmp_path) == before  # truncated back: the next line cannot be glued on

    monkeypatch.setattr(os, "write", real_write)
    append_audit(tmp_path, line(workflow_id="after"))
    assert [json.loads(x)["workflow_id"] for x in audit_text(tmp_path).splitlines()] == ["before", "after"]


def test_a_line_after_a_torn_last_line_stands_alone(tmp_path):
    (tmp_path / "audit.jsonl").write_text('{"workflow_id":"old"}\n{"workflow_id":"torn-by-a-cr')
    append_audit(tmp_path, line(workflow_id="next"))
    lines = audit_text(tmp_path).splitlines()
    assert lines[:2] == ['{"workflow_id":"old"}', '{"workflow_id":"torn-by-a-cr']
    assert json.loads(lines[2])["workflow_id"] == "next" and len(lines) == 3
    assert audit_text(tmp_path).endswith("\n")


@pytest.mark.parametrize("module", BAD_MODULE_IDS)
def test_a_status_path_needs_a_valid_module_id(tmp_path, module):
    state = tmp_path / "state"
    with pytest.raises(PolicyViolation, match="module id"):
        status_path(state, module)
    with pytest.raises(PolicyViolation):
        read_status(state, module)
    assert not tmp_path.joinpath("escape").exists() and not state.exists()


def test_status_is_never_written_through_a_symlink_out_of_the_state_dir(tmp_path):
    state, outside = tmp_path / "state", tmp_path / "outside"
    state.mkdir()
    outside.mkdir()
    (state / "modules").symlink_to(outside)
    with pytest.raises(PolicyViolation, match="outside the state dir"):
        write_status(state, status("a" * 40))
    assert list(outside.iterdir()) == []


def test_audit_is_never_written_through_a_symlink_out_of_the_state_dir(tmp_path):
    state, outside = tmp_path / "state", tmp_path / "elsewhere.jsonl"
    state.mkdir()
    outside.write_text("")
    (state / "audit.jsonl").symlink_to(outside)
    with pytest.raises(PolicyViolation, match="outside the state dir"):
        append_audit(state, line())
    assert outside.read_text() == ""


def test_display_path_is_relative_inside_the_platform_root(tmp_path):
    inside = tmp_path / ".platform" / "state" / "modules" / "redis.status.json"
    assert display_path(inside, tmp_path) == ".platform/state/modules/redis.status.json"
    assert display_path(inside, tmp_path / "elsewhere") == str(inside)


def test_a_second_line_for_the_same_run_and_outcome_is_not_written(tmp_path):
    first = line(run_id="run-1", module="redis")
    assert append_audit(tmp_path, first) is True
    assert audit_has(tmp_path, first) and audit_has(tmp_path, line(run_id="run-1", at="later"))
    assert append_audit(tmp_path, line(run_id="run-1", at="2025-01-01T00:05:00+00:00")) is False
    assert [json.loads(x)["at"] for x in audit_text(tmp_path).splitlines()] == [first.at]


@pytest.mark.parametrize(
    "other",
    [
        {"run_id": "run-2"},  # a new run of the same workflow id (ids are per module and SHA)
        {"workflow_id": "wf-2"},
        {"status": "tool_error", "exitCode": 2},  # the same run's next outcome (state write failed)
    ],
)
def test_a_line_of_another_run_or_outcome_is_written(tmp_path, other):
    append_audit(tmp_path, line(run_id="run-1"))
    assert not audit_has(tmp_path, line(**{"run_id": "run-1", **other}))
    assert append_audit(tmp_path, line(**{"run_id": "run-1", **other})) is True
    assert len(audit_text(tmp_path).splitlines()) == 2


def test_lines_without_a_run_id_are_always_written(tmp_path):
    # Runs of one workflow id cannot be told apart without it: never taken for a repeat.
    assert append_audit(tmp_path, line()) and append_audit(tmp_path, line())
    assert len(audit_text(tmp_path).splitlines()) == 2


def test_only_a_whole_line_with_that_run_and_outcome_counts(tmp_path):
    wanted = line(run_id="run-1")
    # The run id inside another field, and a torn copy of the very line: neither is the line.
    append_audit(tmp_path, line(run_id="run-0", error='"run_id":"run-1"'))
    torn = json.dumps(wanted.to_json(), sort_keys=True, separators=(",", ":"))[:-5]
    with (tmp_path / "audit.jsonl").open("a") as f:
        f.write(torn + "\n")
    assert not audit_has(tmp_path, wanted)
    assert append_audit(tmp_path, wanted) is True


def test_only_the_tail_of_the_audit_log_is_searched(tmp_path, monkeypatch):
    monkeypatch.setattr(state_module, "AUDIT_TAIL_BYTES", 4096)
    append_audit(tmp_path, line(run_id="run-1"))
    assert audit_has(tmp_path, line(run_id="run-1"))
    for i in range(40):
        append_audit(tmp_path, line(run_id=f"filler-{i}", error="x" * 100))
    assert not audit_has(tmp_path, line(run_id="run-1"))


def test_no_audit_log_has_no_line(tmp_path):
    assert not audit_has(tmp_path, line(run_id="run-1"))
    assert not (tmp_path / "audit.jsonl").exists()
