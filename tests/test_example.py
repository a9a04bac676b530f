"""The README's first apply, before the gate opens: `make run`'s example platform dry-runs its plan as shipped."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.conftest import Harness

REPO = Path(__file__).resolve().parents[1]


async def test_the_example_platform_dry_runs_its_plan_with_the_key_make_creates(ts_env, tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path)
    shutil.copytree(REPO / "example", tmp_path / "example", ignore=shutil.ignore_patterns("keys", ".platform"))
    made = subprocess.run(["make", "-s", "example/keys/platform_deploy"], cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    harness = Harness(client=ts_env.client, root=tmp_path / "example", phase="")

    out = await harness.apply(json.loads((REPO / "example" / "plan.json").read_text()))

    assert (out.status, out.result["exitCode"]) == ("dry_run", 0), out.result["error"]
    assert out.result["command"] == "docker compose -f /opt/platform/compose/core/compose.yaml up -d honcho-redis"
    assert harness.transport.calls == []
