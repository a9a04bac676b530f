"""A first host, from nothing: host/install on a fresh user of this machine (as root, as a host
admin runs it), then `platform-apply doctor`, then a real apply through it: the real worker and
dev server, a real sshd that lets the user in by the authorized_keys line install wrote (with
StrictModes, as on a host), the stand-in docker and the host's own git on a checkout another
user owns (so only install's safe.directory lets the deploy user read it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from platformctl.policy.plan import plan_digest
from tests.cli.test_doctor import doctor
from tests.e2e.conftest import write_hosts, write_module
from tests.host.test_install import needs_docker_group
from tests.platform_files import apply_input, approval, change, plan
from tests.sshd import (
    COMPOSE_FILE,
    STAND_IN_BIN,
    SYSTEM_PATH,
    _install,
    _kill,
    accounts_lock,
    descendants,
    known_hosts_pattern,
    launch_sshd,
    make_keypair,
    unavailable_reason,
)

ADDRESS = "127.0.0.13"  # this test's own sshd


@pytest.fixture
def bare_host():
    """A world-readable folder with the stand-in docker alone in bin/, its state, a host key and
    the deploy key; a fresh user name, removed (with its home) afterwards."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="platform-first-host-"))
    base.chmod(0o755)
    (base / "bin").mkdir(mode=0o755)
    _install(STAND_IN_BIN / "docker", base / "bin" / "docker")
    (base / "state" / "behaviour").mkdir(parents=True)  # the stand-in's: every service succeeds
    (base / "state" / "calls.jsonl").touch()
    user = f"pa-{uuid.uuid4().hex[:10]}"
    processes: list[subprocess.Popen] = []
    yield base, user, processes
    for process in processes:
        for pid in descendants(process.pid):  # its sessions (the worker keeps its connection open)
            _kill(pid)
        process.kill()
        process.wait()
    with accounts_lock():
        subprocess.run(["userdel", "--remove", user], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def git(checkout: Path, *args: str) -> str:
    argv = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(checkout), *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@needs_docker_group
async def test_host_install_on_a_fresh_user_then_doctor_then_a_real_apply(e2e, bare_host):
    base, user, processes = bare_host
    checkout = base / "checkout"  # root's: the deploy user reads it only with safe.directory
    (checkout / COMPOSE_FILE).parent.mkdir(parents=True)
    (checkout / COMPOSE_FILE).write_text("services:\n  redis:\n    image: redis:7\n")
    git(base, "init", "-q", str(checkout))
    git(checkout, "add", COMPOSE_FILE)
    git(checkout, "commit", "-q", "-m", "first")
    head = git(checkout, "rev-parse", "HEAD")
    client_pub = make_keypair(base / "client_key", "platform-first-host")
    host_pub = make_keypair(base / "host_key", "first-host")
    session_path = f"{base / 'bin'}:{SYSTEM_PATH}"

    with accounts_lock():
        installed = subprocess.run(
            ["sh", "host/install", "--user", user, "--prefix", str(base / "usr"), "--key", f"{base}/client_key.pub",
             "--checkout", str(checkout), "--path", session_path],
            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60,
            env={"PATH": SYSTEM_PATH + ":/usr/sbin:/sbin", "STAND_IN_DIR": str(base / "state")},
        )  # fmt: skip
    assert installed.returncode == 0, installed
    assert [line.split(":")[0] for line in installed.stdout.splitlines()] == [
        f"DONE user {user}", "DONE group docker", "DONE gate", "DONE authorized_keys", "OK   compose", "DONE git",
        f"OK   checkout {checkout}", "host/install",
    ], installed.stdout
    home = Path(f"/home/{user}").stat()
    for path in (base / "state", base / "state" / "calls.jsonl", base / "state" / "behaviour"):
        os.chown(path, home.st_uid, home.st_gid)  # the stand-in docker records its calls there, as the user

    process, port = launch_sshd(
        base, ADDRESS, user, ".ssh/authorized_keys", f"PATH={session_path} STAND_IN_DIR={base / 'state'}",
        strict_modes=True,
    )
    processes.append(process)
    write_hosts(e2e.root, {"first": {
        "address": ADDRESS, "port": port, "user": user, "remote_root": str(checkout),
        "known_hosts": f"{known_hosts_pattern(ADDRESS, port)} {host_pub}", "client_key": str(base / "client_key"),
        "connect_timeout_seconds": 5,
    }})  # fmt: skip
    write_module(e2e.root, "first-redis", "first", "redis")

    code, lines = await doctor({"PATH": "/usr/bin:/bin", "PLATFORM_ROOT": str(e2e.root)}, "first")
    assert code == 0 and not [line for line in lines if line.startswith("FAIL")], lines
    assert f"OK   checkout: {checkout} is at {head}" in lines  # the host's git, through safe.directory

    await e2e.start_worker()
    first_plan = plan(module="first-redis", sha=head, changes=[change("redis")])
    out = await e2e.apply(apply_input(first_plan, approval(sha=head, plan_digest=plan_digest(first_plan))))

    assert out.status == "applied", (out.result, e2e.all_logs()[-3000:])
    assert out.result["remote"]["returncode"] == 0 and out.result["checkout_verified"] is True
    calls = [json.loads(line) for line in (base / "state" / "calls.jsonl").read_text().splitlines()]
    assert calls.count(["docker", "compose", "-f", f"{checkout}/{COMPOSE_FILE}", "up", "-d", "redis"]) == 1, calls
    assert client_pub.split()[1] in Path(f"/home/{user}/.ssh/authorized_keys").read_text()
