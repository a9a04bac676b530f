"""State records: atomic status files and an append-only audit log."""

from __future__ import annotations

import json
import threading

from platformctl.state import append_audit, display_path, read_status, status_path, write_status


def test_status_is_replaced_whole_and_leaves_no_temp_files(tmp_path):
    write_status(tmp_path, "redis", {"last_apply_sha": "a" * 40})
    write_status(tmp_path, "redis", {"last_apply_sha": "b" * 40})
    assert read_status(tmp_path, "redis") == {"last_apply_sha": "b" * 40}
    assert [p.name for p in status_path(tmp_path, "redis").parent.iterdir()] == ["redis.status.json"]


def test_missing_status_reads_as_none(tmp_path):
    assert read_status(tmp_path, "never-applied") is None


def test_concurrent_audit_appends_never_interleave(tmp_path):
    def writer(n: int) -> None:
        for i in range(50):
            append_audit(tmp_path, {"writer": n, "i": i, "pad": "x" * 2000})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 200
    assert {(e["writer"], e["i"]) for e in map(json.loads, lines)} == {(n, i) for n in range(4) for i in range(50)}


def test_display_path_is_relative_inside_the_platform_root(tmp_path):
    inside = tmp_path / ".platform" / "state" / "modules" / "redis.status.json"
    assert display_path(inside, tmp_path) == ".platform/state/modules/redis.status.json"
    assert display_path(inside, tmp_path / "elsewhere") == str(inside)
