"""`platform-apply plan`: real compose files in a real git repository, planned across commits."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from platformctl.models import AppliedRecord, Approval, ModuleEvent, Plan
from platformctl.module_state import record_event
from platformctl.policy.plan import validate_plan
from tests.cli.conftest import run_in_process
from tests.cli.test_usage import unreachable_env  # noqa: F401  (fixture: no server answers there)

MODULE = "redis"
SERVICE = "redis"
COMPOSE = "compose/core/compose.yaml"
SECRET = "s3cr3t-hunter2-value"
BASE = f"""\
services:
  redis:
    image: redis:${{REDIS_TAG:-7.2}}
    environment:
      REDIS_PASSWORD: {SECRET}
      REDIS_MAXMEMORY: 256mb
    volumes:
      - ./conf/redis.conf:/usr/local/etc/redis/redis.conf:ro
  other:
    image: busybox
"""


class Repo:
    """A git repository holding a platform root (platform/) and the compose files beside it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.platform = root / "platform"
        root.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")
        self.write(
            "platform/modules/redis/module.yaml",
            f"id: {MODULE}\nhost: h1\nspec:\n  runtime:\n    orchestrator: docker-compose\n"
            f"    compose_file: {COMPOSE}\n",
        )
        self.write("platform/hosts.yaml", "hosts: {}\n")
        self.write("compose/core/conf/redis.conf", "maxclients 100\n")

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=self.root, check=True, capture_output=True, text=True,
        ).stdout.strip()

    def write(self, path: str, text: str) -> None:
        file = self.root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)

    def commit(self, message: str = "change", **files: str) -> str:
        for path, text in files.items():
            self.write(path.replace("__", "/"), text)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path, unreachable_env, monkeypatch) -> Repo:  # noqa: F811
    repo = Repo(tmp_path / "repo")
    monkeypatch.setenv("PLATFORM_ROOT", str(repo.platform))
    return repo


def plan(capsys, *args: str) -> tuple[int, dict | None, str]:
    """Run `plan MODULE args` in process: exit code, the plan JSON (validated as the worker would), stderr."""
    code = run_in_process("plan", MODULE, *args)
    out, err = capsys.readouterr()
    if code != 0:
        assert out == "", out
        return code, None, err
    planned = json.loads(out)
    validate_plan(Plan.model_validate({**planned, "source_dirty": False}), SERVICE)
    assert SECRET not in out + err
    return code, planned, err


def only_change(planned: dict | None) -> dict:
    assert planned is not None and planned["exitCode"] == 1, planned
    [change] = planned["changes"]
    assert change["target"] == f"compose.service.{SERVICE}", change
    return change


def test_create_when_the_service_appears(repo, capsys):
    base = repo.commit(**{"compose__core__compose.yaml": "services:\n  other:\n    image: busybox\n"})
    head = repo.commit(**{"compose__core__compose.yaml": BASE})
    code, planned, err = plan(capsys, "--base", base)
    assert code == 0 and err == "", err
    assert planned is not None and (planned["module"], planned["source_sha"], planned["source_dirty"]) == (
        MODULE, head, False)
    assert only_change(planned) == {
        "target": f"compose.service.{SERVICE}", "action": "create", "summary": "create: service added"}


def test_create_from_a_base_without_the_compose_file(repo, capsys):
    base = repo.commit()
    repo.commit(**{"compose__core__compose.yaml": BASE})
    assert only_change(plan(capsys, "--base", base)[1])["action"] == "create"


def test_update_names_the_keys_never_the_values(repo, capsys):
    base = repo.commit(**{"compose__core__compose.yaml": BASE})
    changed = BASE.replace(SECRET, SECRET + "-rotated").replace("7.2", "7.4").replace(
        "    volumes:", "    ports:\n      - 6379:6379\n    volumes:")
    repo.commit(**{"compose__core__compose.yaml": changed})
    code, planned, err = plan(capsys, "--base", base)
    assert code == 0 and err == ""
    change = only_change(planned)
    assert change["action"] == "update"
    assert change["summary"] == "update: environment.REDIS_PASSWORD, image, ports"
    assert "7.4" not in change["summary"] and "6379" not in change["summary"]


def test_a_yaml_anchor_or_merge_key_is_compared_resolved(repo, capsys):
    anchored = "x-env: &env\n  REDIS_MAXMEMORY: 256mb\n" + BASE.replace(
        "    environment:\n", "    environment:\n      <<: *env\n").replace("      REDIS_MAXMEMORY: 256mb\n", "")
    base = repo.commit(**{"compose__core__compose.yaml": BASE})
    repo.commit(**{"compose__core__compose.yaml": anchored})
    assert plan(capsys, "--base", base)[1] == {
        "module": MODULE, "source_sha": repo.git("rev-parse", "HEAD"), "source_dirty": False,
        "exitCode": 0, "changes": []}
    repo.commit(**{"compose__core__compose.yaml": anchored.replace("256mb", "512mb")})
    assert only_change(plan(capsys, "--base", base)[1])["summary"] == "update: environment.REDIS_MAXMEMORY"


def test_restart_when_only_a_bind_mounted_file_changed(repo, capsys):
    base = repo.commit(**{"compose__core__compose.yaml": BASE})
    repo.commit(**{"compose__core__conf__redis.conf": "maxclients 200\n", "README": "unrelated\n"})
    code, planned, _ = plan(capsys, "--base", base)
    assert code == 0
    assert only_change(planned) == {
        "target": f"compose.service.{SERVICE}", "action": "restart",
        "summary": "restart: 1 bind-mounted repository file changed (volumes)"}


def test_an_env_file_whose_content_changed_is_an_update(repo, capsys):
    with_env_file = BASE.replace("    volumes:", "    env_file: ./redis.env\n    volumes:")
    base = repo.commit(**{"compose__core__compose.yaml": with_env_file, "compose__core__redis.env": f"T={SECRET}\n"})
    repo.commit(**{"compose__core__redis.env": f"T={SECRET}-rotated\n"})
    assert only_change(plan(capsys, "--base", base)[1])["summary"] == "update: env_file (content)"


def test_recreate_when_asked(repo, capsys):
    base = repo.commit(**{"compose__core__compose.yaml": BASE})
    repo.commit(**{"compose__core__conf__redis.conf": "maxclients 200\n"})
    assert only_change(plan(capsys, "--base", base, "--recreate")[1])["action"] == "recreate"
    head = repo.git("rev-parse", "HEAD")
    change = only_change(plan(capsys, "--base", head, "--recreate")[1])
    assert change == {"target": f"compose.service.{SERVICE}", "action": "recreate",
                      "summary": "recreate: requested (--recreate), configuration unchanged"}


def test_remove_when_the_service_goes(repo, capsys):
    base = repo.commit(**{"compose__core__compose.yaml": BASE})
    repo.commit(**{"compose__core__compose.yaml": "services:\n  other:\n    image: busybox\n"})
    assert only_change(plan(capsys, "--base", base)[1])["action"] == "remove"


def test_no_changes_is_an_empty_plan_with_exit_code_0(repo, capsys):
    base = repo.commit(**{"compose__core__compose.yaml": BASE})
    head = repo.commit(**{
        "compose__core__compose.yaml": BASE.replace("busybox", "alpine"),  # another service's change
        "README": "unrelated\n",
    })
    code, planned, err = plan(capsys, "--base", base)
    assert (code, err) == (0, "")
    assert planned == {"module": MODULE, "source_sha": head, "source_dirty": False, "exitCode": 0, "changes": []}


def test_a_dirty_tree_is_reported_and_never_read(repo, capsys):
    base = repo.commit(**{"compose__core__compose.yaml": BASE})
    head = repo.commit(**{"README": "x\n"})
    repo.write(COMPOSE, BASE.replace("7.2", "9"))  # uncommitted: the plan is of HEAD, not of this
    code, planned, err = plan(capsys, "--base", base)
    assert code == 0 and planned is not None
    assert (planned["source_sha"], planned["source_dirty"], planned["changes"]) == (head, True, [])
    assert "uncommitted changes" in err
    # --sha of another commit: that commit is what is planned, whatever the tree holds.
    code, planned, _ = plan(capsys, "--base", base, "--sha", base)
    assert planned is not None and (planned["source_sha"], planned["source_dirty"]) == (base, False)


def test_an_untracked_file_does_not_make_the_tree_dirty(repo, capsys):
    base = repo.commit(**{"compose__core__compose.yaml": BASE})
    repo.write("stray.txt", "x\n")
    assert plan(capsys, "--base", base)[1]["source_dirty"] is False  # type: ignore[index]


def test_interpolation_reads_the_dotenv_beside_the_compose_file(repo, capsys):
    uses_env = BASE.replace("256mb", "${MAXMEM}").replace(SECRET, "${REDIS_PASSWORD}")
    base = repo.commit(**{
        "compose__core__compose.yaml": uses_env,
        "compose__core__.env": f"MAXMEM=256mb\nREDIS_PASSWORD={SECRET}\nREDIS_TAG=7.2\n",
    })
    # The same resolved values, spelled differently: no change.
    repo.commit(**{"compose__core__compose.yaml": BASE})
    assert plan(capsys, "--base", base)[1]["changes"] == []  # type: ignore[index]
    repo.commit(**{"compose__core__.env": f"MAXMEM=256mb\nREDIS_PASSWORD={SECRET}x\nREDIS_TAG=7.2\n",
                   "compose__core__compose.yaml": uses_env})
    code, planned, err = plan(capsys, "--base", base)
    assert (code, err) == (0, "")
    assert only_change(planned)["summary"] == "update: environment.REDIS_PASSWORD"


def test_an_unset_variable_warns_naming_it_and_still_plans(repo, capsys, monkeypatch):
    base = repo.commit(**{"compose__core__compose.yaml": BASE})
    monkeypatch.setenv("HOST_ONLY_TOKEN", SECRET)  # CI's own environment is not the host's: never read
    repo.commit(**{"compose__core__compose.yaml": BASE.replace("256mb", "${HOST_ONLY_TOKEN}")})
    code, planned, err = plan(capsys, "--base", base)
    assert code == 0
    assert only_change(planned)["summary"] == "update: environment.REDIS_MAXMEMORY; unset on CI: HOST_ONLY_TOKEN"
    [line] = err.splitlines()
    assert line.startswith("platform-apply: warning: variable HOST_ONLY_TOKEN is unset at "), line


def test_output_writes_the_file_and_nothing_on_stdout(repo, capsys, tmp_path):
    base = repo.commit(**{"compose__core__compose.yaml": BASE})
    out = tmp_path / "plan.json"
    assert run_in_process("plan", MODULE, "--base", base, "--output", str(out)) == 0
    assert capsys.readouterr().out == ""
    assert json.loads(out.read_text())["source_sha"] == base


def test_usage_errors_exit_64(repo, capsys, tmp_path, monkeypatch):
    base = repo.commit(**{"compose__core__compose.yaml": BASE})
    cases = {
        "unknown module": ["plan", "nosuch", "--base", base],
        "bad module id": ["plan", "Bad Module", "--base", base],
        "not hex": ["plan", MODULE, "--base", "HEAD~1"],
        "option-like": ["plan", MODULE, "--sha=--output=x"],
        "no such commit": ["plan", MODULE, "--base", "0" * 40],
    }
    for name, argv in cases.items():
        assert run_in_process(*argv) == 64, name
        out, err = capsys.readouterr()
        assert out == "" and err.strip(), (name, err)
    assert run_in_process("plan", MODULE, "--base", "0" * 7) == 64  # a short SHA that names nothing
    assert "is not a commit of this repository" in capsys.readouterr().err
    repo.git("rm", "-q", COMPOSE)
    gone = repo.commit("no compose file")
    assert run_in_process("plan", MODULE, "--base", gone) == 64
    assert "is in neither the target nor the base commit" in capsys.readouterr().err
    repo.commit(**{"compose__core__compose.yaml": "services:\n  redis:\n    image: " + "x" * (5 << 20) + "\n"})
    assert run_in_process("plan", MODULE, "--base", base) == 64
    assert "over the" in capsys.readouterr().err
    repo.commit(**{"compose__core__compose.yaml": f"services:\n  redis: [{SECRET}\n"})
    assert run_in_process("plan", MODULE, "--base", base) == 64
    out, err = capsys.readouterr()
    assert "is not valid YAML" in err and SECRET not in out + err
    outside = tmp_path / "not-a-repo"
    (outside / "modules").mkdir(parents=True)
    monkeypatch.setenv("PLATFORM_ROOT", str(outside))
    assert run_in_process("plan", MODULE, "--base", base) == 64
    assert "not in a git repository" in capsys.readouterr().err


def test_without_base_an_unreachable_server_exits_2(repo, capsys):
    repo.commit(**{"compose__core__compose.yaml": BASE})
    assert run_in_process("plan", MODULE) == 2
    out, err = capsys.readouterr()
    assert out == "" and "cannot reach Temporal" in err


def test_git_missing_exits_2(repo, capsys, monkeypatch, tmp_path):
    base = repo.commit(**{"compose__core__compose.yaml": BASE})
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert run_in_process("plan", MODULE, "--base", base) == 2
    assert "git is not installed" in capsys.readouterr().err


async def test_the_base_is_the_last_applied_sha_of_the_module_state(e2e, tmp_path, monkeypatch, capsys):  # noqa: F811
    repo = Repo(tmp_path / "repo")
    applied = repo.commit(**{"compose__core__compose.yaml": BASE})
    repo.commit(**{"compose__core__compose.yaml": BASE.replace("7.2", "7.4")})
    env = {**e2e.worker_env(phase=None), "PLATFORM_ROOT": str(repo.platform)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TEMPORAL_ADDRESS", e2e.server.address)

    # No state recorded: the service is new.
    assert only_change(await plan_async(capsys))["action"] == "create"

    await e2e.start_worker(phase=None)  # the state workflow answers its query
    record = {"module": MODULE, "source_sha": applied, "changes": []}
    await record_event(e2e.client, e2e.task_queue, ModuleEvent(module=MODULE, applied=AppliedRecord(
        sha=applied, pr=7, approved_by="ci", plan=Plan.model_validate(record),
        approval=Approval(approved_sha=applied, approved_pr=7), plan_digest=None, workflow_id="apply-x",
        host="h1", compose_service=SERVICE, at="2026-12-08T00:00:00Z",
    )))
    assert only_change(await plan_async(capsys)) == {
        "target": f"compose.service.{SERVICE}", "action": "update", "summary": "update: image"}


async def plan_async(capsys) -> dict:
    """`plan MODULE` without --base, off the event loop (main runs its own asyncio.run)."""
    code = await asyncio.to_thread(run_in_process, "plan", MODULE)
    out, err = capsys.readouterr()
    assert code == 0, err
    return dict(json.loads(out))
