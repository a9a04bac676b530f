"""examples/ci: the script both CI workflows call, run against the dev server."""

from __future__ import annotations

import asyncio
import os

import yaml

from tests.cli.conftest import PLATFORM_APPLY, new_module, write_json
from tests.e2e.conftest import REPO, compose_up_argv, write_module
from tests.platform_files import SHA, change, plan

SCRIPT = REPO / "examples" / "ci" / "apply.sh"


async def apply_sh(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "sh", str(SCRIPT), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_apply_sh_exits_0_for_an_applied_change_and_fails_otherwise(
    platform, sshd_host, host_name, cli, tmp_path
):
    module = new_module()
    write_module(platform.root, module, host_name)
    await platform.start_worker(phase="05")
    # As on a runner: platform-apply found on PATH.
    env = {**cli.env, "PATH": f"{PLATFORM_APPLY.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    plan_file = write_json(tmp_path / "plan.json", plan(module=module, changes=[change(module)]))
    code, out, err = await apply_sh(env, str(plan_file), SHA, "165")
    assert code == 0, (out, err)
    assert out.startswith(f"applied {module}@{host_name} 0123456 exit 9"), (out, err)
    assert sshd_host.calls().count(compose_up_argv(sshd_host, module)) == 1

    blocked = new_module()
    write_module(platform.root, blocked, host_name)
    plan_file = write_json(tmp_path / "blocked.json", plan(module=blocked, changes=[change("not-this-one")]))
    code, out, err = await apply_sh(env, str(plan_file), SHA, "165")
    assert code == 3 and "platform-apply exited 3" in err, (code, out, err)

    assert (await apply_sh(env, str(plan_file)))[0] == 64


def test_both_workflows_apply_merged_prs_through_the_script():
    for ci in ("forgejo", "github"):
        doc = yaml.safe_load((REPO / "examples" / "ci" / ci / "apply.yml").read_text())
        triggers = doc[True] if True in doc else doc["on"]  # YAML 1.1 reads a bare `on` as true
        assert triggers["pull_request"]["types"] == ["closed"], ci
        job = doc["jobs"]["apply"]
        assert job["if"] == "github.event.pull_request.merged == true", ci
        runs = [step.get("run", "") for step in job["steps"]]
        assert any(
            r.startswith("sh examples/ci/apply.sh ") and r.endswith('"$MERGE_SHA" "$PR_NUMBER"') for r in runs
        ), (ci, runs)
        assert job["env"]["MERGE_SHA"] == "${{ github.event.pull_request.merge_commit_sha }}", ci
        assert job["env"]["PR_NUMBER"] == "${{ github.event.pull_request.number }}", ci


def test_both_workflows_install_platform_apply_from_a_pinned_commit_never_by_name():
    """A name on a package index can be registered by anyone, and the job holds the signing key."""
    for ci in ("forgejo", "github"):
        doc = yaml.safe_load((REPO / "examples" / "ci" / ci / "apply.yml").read_text())
        [install] = [s for s in doc["jobs"]["apply"]["steps"] if s.get("name") == "Install platform-apply"]
        assert "pip" not in install["run"], (ci, install)
        assert install["run"].startswith('PLATFORM_APPLY=$(sh examples/ci/install.sh "$PLATFORM_APPLY_REPO" '
                                         '"$PLATFORM_APPLY_REF" '), (ci, install)
        assert install["env"]["PLATFORM_APPLY_REF"] == "${{ vars.PLATFORM_APPLY_REF }}", ci
    script = (REPO / "examples" / "ci" / "install.sh").read_text()
    assert "--require-hashes -r" in script and "--no-deps" in script


async def test_install_sh_refuses_a_ref_that_is_not_a_full_commit(tmp_path):
    for ref in ("v1.0", "main", "0" * 39, ""):
        proc = await asyncio.create_subprocess_exec(
            "sh", str(REPO / "examples" / "ci" / "install.sh"), str(REPO), ref, str(tmp_path / "venv"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        assert proc.returncode == 64 and b"full commit SHA" in err, (ref, err)
    assert not (tmp_path / "venv").exists()
