"""host/install, as a host admin runs it (as root, here into a scratch prefix): it prepares
a fresh deploy user once and then changes nothing, repairs what stalls a first apply (a
locked account, a nologin shell, the key's line), refuses non-root and unsafe values, and
refuses to replace an agent that holds a lease unless forced."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from platformctl import commands
from tests.sshd import (
    DEPLOY_USER,
    REPO,
    STAND_IN_BIN,
    SYSTEM_PATH,
    _ensure_user,
    _install,
    accounts_lock,
    make_keypair,
)

sys.path.insert(0, str(REPO / "host"))
import platform_agent  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="host/install runs as root")
INSTALL = REPO / "host" / "install"


def no_docker_group() -> bool:
    try:
        grp.getgrnam("docker")
        return False
    except KeyError:
        return True


# host/install puts the deploy user in group docker, which Debian's docker.io makes (CI installs it).
needs_docker_group = pytest.mark.skipif(no_docker_group(), reason="no group docker here: apt-get install docker.io")


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A world-readable folder (not pytest's 0700 tmp: the deploy user runs what is in it)
    holding bin/ with the stand-in docker alone (install asks it `docker compose version`;
    git is the host's own) and an empty stand-in state."""
    base = Path(tempfile.mkdtemp(prefix="platform-install-"))
    base.chmod(0o755)
    (base / "bin").mkdir(mode=0o755)
    _install(STAND_IN_BIN / "docker", base / "bin" / "docker")
    (base / "state").mkdir()
    yield base
    shutil.rmtree(base, ignore_errors=True)


def install(scratch: Path, *options: str, user: str = DEPLOY_USER) -> subprocess.CompletedProcess:
    """host/install into scratch/usr, the deploy user's docker on --path; one account change at a time."""
    argv = ["sh", str(INSTALL), "--prefix", str(scratch / "usr"), "--user", user,
            "--path", f"{scratch / 'bin'}:{SYSTEM_PATH}", *options]  # fmt: skip
    env = {"PATH": SYSTEM_PATH + ":/usr/sbin:/sbin", "STAND_IN_DIR": str(scratch / "state")}
    with accounts_lock():
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def check(gate: Path, state: Path) -> dict:
    """`platform-agent check` through the installed gate, as the deploy user's key runs it."""
    ran = subprocess.run(
        [str(gate), "--state", str(state), "/srv/platform"], user=DEPLOY_USER, cwd="/",
        env={"SSH_ORIGINAL_COMMAND": commands.agent_check().render(), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def make_checkout(base: Path) -> Path:
    """A git checkout owned by root: the deploy user reads it only with safe.directory."""
    checkout = base / "checkout"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(checkout)]
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    (checkout / "compose.yaml").write_text("services: {}\n")
    subprocess.run([*git, "add", "compose.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    return checkout


@pytest.fixture
def fresh_user() -> Iterator[str]:
    user = f"pa-{uuid.uuid4().hex[:10]}"
    yield user
    with accounts_lock():
        subprocess.run(["userdel", "--remove", user], capture_output=True)


def shadow(user: str) -> str:
    return next(line for line in Path("/etc/shadow").read_text().splitlines() if line.startswith(user + ":"))


@needs_docker_group
def test_install_prepares_a_fresh_user_then_changes_nothing_and_repairs_what_stalls_sshd(scratch, fresh_user):
    user = fresh_user
    make_keypair(scratch / "deploy")
    checkout = make_checkout(scratch)
    gate = scratch / "usr" / "bin" / "platform-gate"
    options = ("--key", str(scratch / "deploy.pub"), "--checkout", str(checkout))

    first = install(scratch, *options, user=user)

    assert first.returncode == 0, first
    home = Path(pwd.getpwnam(user).pw_dir)
    keys = home / ".ssh" / "authorized_keys"
    fp = subprocess.run(["ssh-keygen", "-lf", str(scratch / "deploy.pub")], capture_output=True, text=True).stdout
    forced = f"{gate} --path {scratch / 'bin'}:{SYSTEM_PATH} {checkout}"
    assert first.stdout.splitlines() == [
        f"DONE user {user}: created (home {home}, shell /bin/sh, no password: key logins only)",
        f"DONE group docker: added {user} (new SSH sessions have it)",
        f"DONE gate: installed {gate} (agent protocol {commands.AGENT_PROTOCOL})",
        f"DONE authorized_keys: key {fp.split()[1]} forced through {forced} ({keys})",
        f"OK   compose: docker compose 2.29.7 for {user}",
        f"DONE git: safe.directory {checkout} for {user} (git refuses a checkout another user owns without it)",
        f"OK   checkout {checkout}: a git checkout {user} can read",
        "host/install: 5 changed",
    ]
    entry = pwd.getpwnam(user)
    assert shadow(user).split(":")[1] == "*" and entry.pw_shell == "/bin/sh"  # no password, yet not locked
    assert user in subprocess.run(["id", "-nG", user], capture_output=True, text=True).stdout.split()
    assert entry.pw_uid != 0
    key = (scratch / "deploy.pub").read_text().split()
    assert keys.read_text() == f'command="{forced}",restrict {key[0]} {key[1]} {key[2]}\n'
    assert (keys.stat().st_mode & 0o777, keys.stat().st_uid) == (0o600, entry.pw_uid)
    assert check(gate, home / ".platform-agent")["agent"] == commands.AGENT_PROTOCOL

    def state() -> dict:
        """What install may change: its files (bytes and times) and the account (others' tests change
        /etc/passwd and /etc/group meanwhile: only this user's entries count)."""
        files = [keys, home / ".gitconfig", *(gate.resolve().parent.iterdir())]
        groups = subprocess.run(["id", "-nG", user], capture_output=True, text=True).stdout
        return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in files if p.is_file()} | {
            "account": (pwd.getpwnam(user), shadow(user), groups)
        }

    before = state()
    again = install(scratch, *options, user=user)

    assert again.returncode == 0, again
    assert not [line for line in again.stdout.splitlines() if line.startswith(("DONE", "FAIL"))], again.stdout
    assert again.stdout.splitlines()[-1] == "host/install: nothing to change"
    assert state() == before

    # What stalled a first day: a locked account (useradd's `!`), a nologin shell, and a key
    # line without the forced command sync needs; another key's line stays as it was.
    subprocess.run(["usermod", "--password", "!", "--shell", "/usr/sbin/nologin", user], check=True)
    other = f"ssh-ed25519 {'A' * 68} operators\n"
    keys.write_text(keys.read_text() + other)
    repaired = install(scratch, *options, "--allow-sync", user=user)

    assert repaired.returncode == 69, repaired  # the root-owned checkout cannot be synced by the user
    done = [line for line in repaired.stdout.splitlines() if line.startswith(("DONE", "FAIL", "     fix"))]
    assert done == [
        f"DONE user {user}: shell /usr/sbin/nologin runs no forced command: now /bin/sh",
        f"DONE user {user}: unlocked (sshd refuses a locked account even for keys): no password, key logins only",
        f"DONE authorized_keys: key {fp.split()[1]} forced through {gate} --path {scratch / 'bin'}:{SYSTEM_PATH} "
        f"--allow-sync {checkout} ({keys})",
        f"FAIL checkout {checkout}: --allow-sync, but {user} cannot change it",
        f"     fix: chown -R {user}: {checkout}",
    ]
    assert shadow(user).split(":")[1] == "*" and pwd.getpwnam(user).pw_shell == "/bin/sh"
    assert keys.read_text() == other + f'command="{gate} --path {scratch / "bin"}:{SYSTEM_PATH} --allow-sync ' \
        f'{checkout}",restrict {key[0]} {key[1]} {key[2]}\n'


def test_install_refuses_non_root_and_anything_a_shell_would_read_in_the_forced_command(scratch):
    # A copy nobody can read: the checkout this runs from may sit in a private (0700) folder.
    readable = Path(tempfile.mkdtemp(prefix="platform-install-"))
    try:
        readable.chmod(0o755)
        shutil.copy(INSTALL, readable / "install")
        (readable / "install").chmod(0o644)
        as_nobody = subprocess.run(["sh", str(readable / "install")], user="nobody", cwd="/", capture_output=True,
                                   text=True)
    finally:
        shutil.rmtree(readable)
    assert as_nobody.returncode == 77 and "run it as root" in as_nobody.stderr, as_nobody
    for options, words in [
        (("--checkout", "/opt/platform;id"), "may hold only"),
        (("--checkout", "/opt/../etc"), "normalized"),
        (("--sacred", "$(id)"), "may hold only"),
        (("--authorized-key", 'command="sh" ssh-ed25519 AAAA', "--checkout", "/opt/p"), "not a public key"),
        (("--authorized-key", "ssh-ed25519 AAAA"), "needs --checkout"),
        (("--user", "root"), "never root"),
    ]:
        refused = install(scratch, *options)
        assert refused.returncode == 64 and words in refused.stderr and refused.stdout == "", (options, refused)
    assert not (scratch / "usr").exists()


@needs_docker_group
def test_install_refuses_to_replace_an_agent_that_holds_a_lease_unless_forced(scratch):
    entry = _ensure_user(DEPLOY_USER)
    state = Path(entry.pw_dir) / ".platform-agent"
    made = not state.exists()
    try:
        first = install(scratch)
        assert first.returncode == 0, first
        gate = scratch / "usr" / "bin" / "platform-gate"
        assert f"DONE gate: installed {gate} (agent protocol {commands.AGENT_PROTOCOL})" in first.stdout
        assert check(gate, state)["agent"] == commands.AGENT_PROTOCOL

        # An apply between its compose up and its end, as the agent records it.
        run = str(uuid.uuid4())
        dirs = platform_agent._dirs(str(state))
        platform_agent._take_lease(dirs, "core", run, "health", 600)
        subprocess.run(["chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", str(state)], check=True)
        assert [lease["run"] for lease in check(gate, state)["leases"]] == [run]

        refused = install(scratch)
        assert refused.returncode == 75, refused
        assert f"project core: leased to run {run}" in refused.stdout and "--force" in refused.stderr
        assert install(scratch, "--force").returncode == 0
    finally:
        if made:
            shutil.rmtree(state, ignore_errors=True)
        else:
            (state / "leases" / "core.json").unlink(missing_ok=True)
