"""host/install, as a host admin runs it (as root, here into a scratch prefix): the
gate it installs answers the agent's verbs, and it refuses to replace an agent that
holds a lease unless forced."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from platformctl import commands
from tests.sshd import DEPLOY_USER, REPO, _ensure_user

sys.path.insert(0, str(REPO / "host"))
import platform_agent  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="host/install runs as root")


def install(prefix: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(REPO / "host" / "install"), "--prefix", str(prefix), "--user", DEPLOY_USER, *options],
        capture_output=True, text=True, timeout=60,
    )


def check(gate: Path, state: Path) -> dict:
    """`platform-agent check` through the installed gate, as the deploy user's key runs it."""
    ran = subprocess.run(
        [str(gate), "--state", str(state), "/srv/platform"], user=DEPLOY_USER, cwd="/",
        env={"SSH_ORIGINAL_COMMAND": commands.agent_check().render(), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30,
    )
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def test_install_refuses_to_replace_an_agent_that_holds_a_lease_unless_forced():
    entry = _ensure_user(DEPLOY_USER)
    state = Path(entry.pw_dir) / ".platform-agent"
    made = not state.exists()
    prefix = Path(tempfile.mkdtemp(prefix="platform-install-"))  # not under pytest's 0700 tmp: the deploy user runs it
    prefix.chmod(0o755)
    try:
        first = install(prefix)
        assert first.returncode == 0, first.stderr
        assert first.stdout == f"installed {prefix}/bin/platform-gate (agent protocol {commands.AGENT_PROTOCOL})\n"
        gate = prefix / "bin" / "platform-gate"
        assert check(gate, state)["agent"] == commands.AGENT_PROTOCOL

        # An apply between its compose up and its end, as the agent records it.
        run = str(uuid.uuid4())
        dirs = platform_agent._dirs(str(state))
        platform_agent._take_lease(dirs, "core", run, "health", 600)
        subprocess.run(["chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", str(state)], check=True)
        assert [lease["run"] for lease in check(gate, state)["leases"]] == [run]

        refused = install(prefix)
        assert refused.returncode == 75, refused
        assert f"project core: leased to run {run}" in refused.stdout and "--force" in refused.stderr
        assert install(prefix, "--force").returncode == 0
    finally:
        shutil.rmtree(prefix)
        if made:
            shutil.rmtree(state, ignore_errors=True)
        else:
            (state / "leases" / "core.json").unlink(missing_ok=True)
