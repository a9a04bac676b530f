"""sync_checkout on the host: the agent's `apply ... --sync` brings a real git checkout to the
approved commit (fetched from the checkout's own remote, checked out detached) before its
checkout check, refuses an edited or unreachable one, and runs only where the host's admin
wrote --allow-sync. Through the gate as sshd runs it, then over a real sshd."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from activities import host_agent
from platformctl import commands
from platformctl.models import Target
from platformctl.outcomes import ApplyError
from platformctl.policy.remote_output import agent_answer
from platformctl.transport.ssh import SshTransport
from tests.sshd import COMPOSE_FILE, REPO, STAND_IN_BIN, SYSTEM_PATH, SshHost, _install, serve
from tests.transport.test_gate import make_root, recorded, run_gate

sys.path.insert(0, str(REPO / "host"))
import platform_agent  # noqa: E402

SYNC_ADDRESS = "127.0.0.12"  # this file's own sshd: the host's real git, --allow-sync


def git(cwd: Path | str, *args: str) -> str:
    """git as the test (root) runs it: any owner's checkout, no config of the machine's."""
    env = {"PATH": SYSTEM_PATH, "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1"}
    argv = ["git", "-c", "safe.directory=*", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(cwd)]
    return subprocess.run([*argv, *args], env=env, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class Repos:
    checkout: Path  # the host's remote_root, cloned from `remote`
    upstream: Path  # where new commits are made and pushed, as CI's merge would
    first: str  # what the checkout holds
    new: str  # pushed to the remote, not fetched by the checkout yet


def make_repos(base: Path, checkout: Path) -> Repos:
    """A bare "remote", `checkout` (an existing folder with the compose file) made a clone of it,
    and a newer commit pushed from another clone."""
    remote, upstream = base / "remote.git", base / "upstream"
    git(base, "init", "-q", "--bare", "-b", "main", str(remote))
    git(checkout, "init", "-q", "-b", "main")
    git(checkout, "add", COMPOSE_FILE)
    git(checkout, "commit", "-q", "-m", "first")
    git(checkout, "remote", "add", "origin", str(remote))
    git(checkout, "push", "-q", "-u", "origin", "main")
    git(base, "clone", "-q", str(remote), str(upstream))
    (upstream / COMPOSE_FILE).write_text("services:\n  redis:\n    image: redis:7.4\n")
    git(upstream, "commit", "-q", "-am", "bump redis")
    git(upstream, "push", "-q", "origin", "main")
    return Repos(checkout, upstream, git(checkout, "rev-parse", "HEAD"), git(upstream, "rev-parse", "HEAD"))


def run_id() -> str:
    return str(uuid.uuid4())


# ---- through the gate, as sshd runs it ---------------------------------------------


@pytest.fixture
def host(tmp_path):
    """A gate root that is a real checkout; docker the stand-in, git the host's own."""
    root, state = make_root(tmp_path)
    (tmp_path / "bin").mkdir()
    _install(STAND_IN_BIN / "docker", tmp_path / "bin" / "docker")
    return root, state, tmp_path / "agent", make_repos(tmp_path, Path(root)), f"{tmp_path / 'bin'}:{SYSTEM_PATH}"


def apply(host, sha: str, *options: str, sync: bool = True, run: str | None = None) -> dict:
    root, state, agent, _, path = host
    command = commands.agent_apply(run or run_id(), 30, f"{root}/{COMPOSE_FILE}", "redis", sha, sync=sync)
    result = run_gate(root, state, command.render(), "--path", path, "--state", str(agent), *options)
    assert result.returncode == 0, result.stderr
    agent_answer(result.stdout, command.argv[2])  # the worker reads every answer as typed facts
    return json.loads(result.stdout)


def ups(state: Path) -> int:
    return sum(1 for argv in recorded(state) if argv[4:5] == ["up"])


def test_sync_fetches_and_checks_out_the_approved_commit_detached_then_runs_compose_up(host):
    root, state, agent, repos, _ = host
    run = run_id()
    ran = apply(host, repos.new, "--allow-sync", run=run)
    assert (ran["answer"], ran["returncode"], ran["synced"]) == ("ran", 0, True)
    assert git(root, "rev-parse", "HEAD") == repos.new
    assert subprocess.run(["git", "-C", root, "symbolic-ref", "-q", "HEAD"]).returncode == 1  # detached
    assert ups(state) == 1
    kept = run_gate(root, state, commands.agent_logs(run).render(), "--state", str(agent), "--read-only")
    assert "== sync.fetch.stderr:" in kept.stdout  # git's own words stay on the host, with the run's
    assert apply(host, repos.new, "--allow-sync", run=run) == {**ran, "replayed": True}  # never fetched twice
    release = commands.agent_release(run).render()
    assert run_gate(root, state, release, "--state", str(agent)).returncode == 0
    again = apply(host, repos.new, "--allow-sync")
    assert (again["answer"], again["synced"]) == ("ran", False)  # already there: no fetch, no checkout
    assert ups(state) == 2


@pytest.mark.parametrize("case", ["unreachable", "remote gone", "edited", "not allowed"])
def test_sync_refuses_and_leaves_the_checkout_and_the_service_as_they_were(host, case):
    root, state, _, repos, _ = host
    sha, options = repos.new, ["--allow-sync"]
    if case == "unreachable":
        sha = "f" * 40  # approved, but pushed nowhere the remote's branches reach
    elif case == "remote gone":
        git(root, "remote", "set-url", "origin", f"{root}/no-such-remote.git")
    elif case == "edited":
        (Path(root) / COMPOSE_FILE).write_text("services:\n  redis:\n    image: edited-on-the-host\n")
    else:
        options = []
    answer = apply(host, sha, *options)
    assert answer["answer"] == "refused", answer
    assert (answer["reason"], answer.get("fetched")) == {
        "unreachable": ("sync_unreachable", True),
        "remote gone": ("sync_unreachable", False),
        "edited": ("sync_dirty", None),
        "not allowed": ("sync_not_allowed", None),
    }[case]
    assert git(root, "rev-parse", "HEAD") == repos.first and ups(state) == 0
    if case == "edited":
        assert "edited-on-the-host" in (Path(root) / COMPOSE_FILE).read_text()  # a local edit is never thrown away


def test_the_gate_takes_sync_only_in_its_shape(host):
    root, state, agent, repos, path = host
    compose = f"{root}/{COMPOSE_FILE}"
    for command in (
        f"platform-agent apply {run_id()} 30 {compose} redis - --lease --sync",  # sync needs the SHA
        f"platform-agent apply {run_id()} 30 {compose} redis {repos.new} --sync --lease",
        f"platform-agent apply {run_id()} 30 {compose} redis {repos.new} --lease --sync --sync",
        f"platform-agent apply {run_id()} 30 {compose} redis {repos.new} --sync",
        "platform-agent check --prerequisites now",
    ):
        result = run_gate(root, state, command, "--path", path, "--state", str(agent), "--allow-sync")
        assert result.returncode == commands.GATE_REFUSED, command
    refused = run_gate(root, state, commands.agent_apply(run_id(), 30, compose, "redis", repos.new, sync=True).render(),
                       "--state", str(agent), "--allow-sync", "--read-only")  # fmt: skip
    assert refused.returncode == commands.GATE_REFUSED and "read-only" in refused.stderr
    assert recorded(state) == [] and git(root, "rev-parse", "HEAD") == repos.first


def check(host, *options: str) -> dict:
    root, state, agent, _, path = host
    result = run_gate(root, state, commands.agent_check(prerequisites=True).render(), "--path", path,
                      "--state", str(agent), *options)  # fmt: skip
    assert result.returncode == 0, result.stderr
    agent_answer(result.stdout, None, "check")
    return json.loads(result.stdout)


def test_check_reports_the_prerequisites_and_sync_as_facts(host):
    root, state, _, _, _ = host
    facts = check(host, "--allow-sync", "--read-only")  # the operators' key may ask
    assert {k: facts[k] for k in ("sync_allowed", "docker", "engine_version", "compose_version", "sync_remote")} == {
        "sync_allowed": True, "docker": "ok", "engine_version": "27.3.1", "compose_version": "2.29.7",
        "sync_remote": True,
    }  # fmt: skip
    (state / "engine").write_text("permission no_compose\n")
    facts = check(host)
    assert (facts["sync_allowed"], facts["docker"], facts["engine_version"], facts["compose_version"]) == (
        False, "permission", None, None
    )
    assert "sync_remote" not in facts and "denied" not in json.dumps(facts)  # facts, never the host's words
    assert recorded(state) == []


def test_a_sync_waits_for_compose_runs_from_the_checkout_and_they_share_it(host, monkeypatch):
    """The checkout is one for every project: a sync moves it only when no other apply is
    between its checkout check and the end of its compose up (they hold its lock shared)."""
    root, state, agent, repos, path = host
    monkeypatch.setattr(platform_agent, "LOCK_WAIT_S", 0.2)
    monkeypatch.setenv("STAND_IN_DIR", str(state))
    dirs = platform_agent._dirs(str(agent))
    env = dict(os.environ, PATH=path)
    lock_path = os.path.join(dirs["locks"], platform_agent.CHECKOUT_LOCK)
    other = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)  # another project's compose up, running
    fcntl.flock(other, fcntl.LOCK_SH)
    mine = os.open(lock_path, os.O_RDWR)
    try:
        # At its commit already: it shares the checkout with the running one.
        assert platform_agent._at_commit(dirs, run_id(), root, env, repos.first, mine, True) == (None, False)
        os.close(mine)
        mine = os.open(lock_path, os.O_RDWR)
        refusal, _ = platform_agent._at_commit(dirs, run_id(), root, env, repos.new, mine, True)
        assert (refusal["answer"], refusal["busy_with"]) == ("busy", "checkout")
        assert git(root, "rev-parse", "HEAD") == repos.first
        fcntl.flock(other, fcntl.LOCK_UN)  # its compose up ended
        assert platform_agent._at_commit(dirs, run_id(), root, env, repos.new, mine, True) == (None, True)
        assert git(root, "rev-parse", "HEAD") == repos.new
        with pytest.raises(BlockingIOError):  # held shared until compose up ends: no sync moves it meanwhile
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)
        os.close(mine)


# ---- over a real sshd ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sync_server():
    yield from serve(SYNC_ADDRESS, gate=True, real_git=True, gate_options=("--allow-sync",))


@pytest.fixture
def sync_host(sync_server: SshHost):
    """The deploy user's checkout (so it may sync) cloned from a bare remote in the host's folder."""
    sync_server.reset()
    base, root = Path(sync_server.base_dir), Path(sync_server.remote_root)
    for old in ("remote.git", "upstream"):
        subprocess.run(["rm", "-rf", str(base / old), str(root / ".git")], check=True)
    (root / COMPOSE_FILE).write_text("services:\n  redis:\n    image: redis:7\n")
    repos = make_repos(base, root)
    owner = root.stat()
    subprocess.run(["chown", "-R", f"{owner.st_uid}:{owner.st_gid}", str(root), str(base / "remote.git")], check=True)
    return sync_server, repos


async def test_over_ssh_the_agent_syncs_the_checkout_or_says_why_not(sync_host, sshd_host):
    """Synced to a new commit; an edited tracked file and an unreachable commit refused; a
    host whose admin did not allow sync (the shared test sshd) refused; and a host that did not
    opt in (no --sync sent) refused by the checkout check as before. The worker's words for each."""
    host, repos = sync_host
    config = host.host_config("synced", sync_checkout=True)
    transport = SshTransport()

    async def up(sha: str, sync: bool = True, on: SshHost = host) -> str:
        command = commands.agent_apply(run_id(), 30, on.compose_path, "redis", sha, sync=sync)
        out = await transport.run(on.host_config("h", sync_checkout=sync), command, timeout_s=60)
        answer = agent_answer(out.stdout, command.argv[2])
        target = Target(host=config, compose_path=on.compose_path, compose_service="redis", command="", execute=True,
                        project="core")  # fmt: skip
        try:
            host_agent.apply_outcome(target, answer, command.argv[2])
        except ApplyError as e:
            return f"{e.status}: {e}"
        return f"{answer.answer} synced={answer.synced}"

    try:
        root = host.remote_root
        (Path(root) / COMPOSE_FILE).write_text("services:\n  redis:\n    image: edited\n")
        assert await up(repos.new) == (
            f"blocked: synced:{root} has local edits to tracked files: not synced to the approved commit, the "
            "edits left as they are; nothing ran"
        )
        git(root, "checkout", "-q", "--", COMPOSE_FILE)
        assert await up("e" * 40) == (
            f"blocked: synced: the approved commit is not reachable in {root}: `git fetch` succeeded, but no "
            "branch it fetches holds it (push it to one); nothing ran"
        )
        assert await up(repos.new, sync=False) == (
            f"blocked: synced:{root} holds commit {repos.first}, not the approved one"
        )  # no opt-in: the checkout check, as before
        assert await up(repos.new) == "ran synced=True"
        assert git(root, "rev-parse", "HEAD") == repos.new
        assert await up(repos.new, on=sshd_host) == (
            "blocked: synced: hosts.yaml sets sync_checkout, but the host does not allow it (its deploy key's forced "
            "command has no --allow-sync: run host/install --allow-sync there, or sync by hand, see "
            "docs/security.md); nothing ran"
        )
        assert [c for c in sshd_host.calls() if c[0] == "git" or c[4:5] == ["up"]] == []  # nothing ran there
    finally:
        await transport.close()
