"""`platform-apply doctor HOST` against the real test sshd: only the read-only
commands of platformctl/commands.py reach the host, and each failure comes with
its fix, in our words (nothing the host printed)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from platformctl.cli import doctor as doctor_module
from platformctl.commands import AGENT_PROTOCOL, RemoteCommand
from platformctl.models import HostConfig
from platformctl.transport import RemoteOutput
from tests.cli.conftest import PLATFORM_APPLY
from tests.e2e.conftest import compose_ps_argv, ssh_host_entry, write_hosts, write_module, wrong_host_key_line
from tests.platform_files import SHA
from tests.sshd import DEPLOY_USER, LEASE_TTL_S, make_keypair


@pytest.fixture
def doctor_env(tmp_path):
    root = tmp_path / "platform"
    (root / "modules").mkdir(parents=True)
    # No Temporal needed: doctor reads the platform files and talks SSH only.
    return root, {"PATH": "/usr/bin:/bin", "PLATFORM_ROOT": str(root), "TEMPORAL_ADDRESS": "127.0.0.1:1"}


async def doctor(env: dict[str, str], host: str) -> tuple[int, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        str(PLATFORM_APPLY), "doctor", host, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert not err, err
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines()


async def test_doctor_is_ok_against_the_real_sshd(doctor_env, sshd_host):
    root, env = doctor_env
    write_hosts(root, {"h1": ssh_host_entry(sshd_host)})
    write_module(root, "cache", "h1", "redis")
    write_module(root, "elsewhere", "h2", "other", compose_file="compose/other/compose.yaml")

    code, lines = await doctor(env, "h1")

    assert code == 0, lines
    assert not [line for line in lines if line.startswith("FAIL") or "fix:" in line], lines
    for check in ("allowlist", "reachable", "host key", "client key"):
        assert any(line.startswith(f"OK   {check}: ") for line in lines), (check, lines)
    assert f"OK   checkout: {sshd_host.remote_root} is at {SHA}" in lines
    assert f"OK   compose ps redis: {sshd_host.compose_path} (running, healthy)" in lines
    ttl = f"leases expire {LEASE_TTL_S} s after their run last spoke"
    assert f"OK   host agent: v{AGENT_PROTOCOL}, behind the gate, {ttl}" in lines
    assert "OK   leases: none held" in lines
    # What host/install sets up, seen by the agent's `check --prerequisites` (the stand-in's versions).
    assert f"OK   docker engine: reachable by {DEPLOY_USER} (engine 27.3.1)" in lines
    assert "OK   compose: v2.29.7 (the compose v2 plugin)" in lines
    assert any(line.startswith(("OK   docker group: ", "-    docker group: ")) for line in lines), lines
    assert sshd_host.calls() == [
        ["git", "-C", sshd_host.remote_root, "rev-parse", "HEAD"],
        compose_ps_argv(sshd_host, "redis"),
    ]  # `check` reads the agent's folder only


async def test_doctor_fails_a_module_that_polls_too_slowly_to_keep_the_hosts_lease(doctor_env, sshd_host):
    root, env = doctor_env
    write_hosts(root, {"h1": ssh_host_entry(sshd_host)})
    slow = LEASE_TTL_S // 3 + 1
    write_module(root, "cache", "h1", "redis", health={"poll_seconds": slow, "timeout_seconds": 60})
    write_module(root, "web", "h1", "web", health={"poll_seconds": LEASE_TTL_S // 3, "timeout_seconds": 60})

    code, lines = await doctor(env, "h1")

    assert code == 4, lines
    assert failures(lines) == [(
        f"FAIL health poll of cache: every {slow} s, more than a third of the host's lease TTL ({LEASE_TTL_S} s)",
        f"     fix: lower health.poll_seconds to {LEASE_TTL_S // 3} or less in modules/cache/module.yaml, or raise "
        "the gate's lease TTL (on the host, as root, from a checkout of this version: host/install --lease-ttl S ...)",
    )]


async def test_doctor_says_when_a_hosts_gate_predates_ps_all(doctor_env, sshd_host):
    root, env = doctor_env
    write_hosts(root, {"h1": ssh_host_entry(sshd_host)})
    write_module(root, "cache", "h1", "redis")
    sshd_host.set_behaviour("redis", "gate_before_all")

    code, lines = await doctor(env, "h1")

    assert code == 4, lines
    [(failed, fix)] = failures(lines)
    assert failed.startswith(f"FAIL compose ps redis: {sshd_host.compose_path}: the host's gate refused `ps --all`")
    assert fix.startswith("     fix: install the current host/platform-gate: "), fix


def fingerprint(public_key_file: Path | str) -> str:
    """SHA256:... as `ssh-keygen -l` prints it."""
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(public_key_file)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def failures(lines: list[str]) -> list[tuple[str, str]]:
    """Each FAIL line with the line after it (its fix)."""
    return [(line, (lines + [""])[i + 1]) for i, line in enumerate(lines) if line.startswith("FAIL")]


async def test_doctor_fails_on_a_wrong_pinned_key_shows_the_offered_one_and_sends_nothing(
    doctor_env, sshd_host, tmp_path
):
    root, env = doctor_env
    write_hosts(root, {"h1": ssh_host_entry(sshd_host, known_hosts=wrong_host_key_line(sshd_host, tmp_path))})
    write_module(root, "cache", "h1", "redis")

    code, lines = await doctor(env, "h1")

    assert code == 4, lines
    assert any(line.startswith("OK   reachable: ") for line in lines), lines
    offered = fingerprint(Path(sshd_host.base_dir, "host_key.pub"))
    pinned = fingerprint(tmp_path / "not_the_host_key.pub")
    [(failed, fix)] = failures(lines)
    where = f"{sshd_host.address}:{sshd_host.port}"
    assert failed == f"FAIL host key: {where} offered ssh-ed25519 {offered}; pinned: ssh-ed25519 {pinned}"
    assert fix.startswith("     fix: if the host's key really changed, compare that fingerprint ") and (
        f"ssh-keyscan -t ssh-ed25519 -p {sshd_host.port} {sshd_host.address}" in fix
    ), fix
    assert sshd_host.calls() == []


async def test_doctor_names_the_causes_of_a_refused_client_key_and_the_install_that_fixes_them(
    doctor_env, sshd_host, tmp_path
):
    """A missing user, a locked account and an unlisted key look alike from here (sshd says no
    more, by design): doctor names them all, the key's fingerprint and host/install's fix."""
    root, env = doctor_env
    make_keypair(tmp_path / "unlisted")
    write_hosts(root, {"h1": ssh_host_entry(sshd_host, client_key=str(tmp_path / "unlisted"))})

    code, lines = await doctor(env, "h1")

    assert code == 4, lines
    [(failed, fix)] = failures(lines)
    assert failed == (
        f"FAIL client key: {sshd_host.address}:{sshd_host.port} refused the key ssh-ed25519 "
        f"{fingerprint(tmp_path / 'unlisted.pub')} for {DEPLOY_USER}: the user is missing, its account is locked "
        "(sshd refuses a locked account, even for keys), or the key is not in its authorized_keys"
    )
    assert fix == (
        f"     fix: on the host, as root, from a checkout of this version: host/install --user {DEPLOY_USER} "
        f"--key FILE --checkout {sshd_host.remote_root} (FILE: the public key, `ssh-keygen -y -f "
        f"{tmp_path / 'unlisted'}`): it creates the user, unlocks it without a password and writes the key's "
        "forced-command line; the host's sshd log says which it was"
    )
    assert "-    docker engine, compose: not checked (not connected)" in lines
    assert sshd_host.calls() == []


async def test_doctor_fails_each_missing_prerequisite_with_its_fix_and_no_host_text(doctor_env, sshd_host, tmp_path):
    """The engine refuses the deploy user, no compose plugin, sync asked of a host whose
    forced command does not allow it, and a remote_root the gate does not serve."""
    root, env = doctor_env
    elsewhere = f"{sshd_host.remote_root}-elsewhere"
    write_hosts(root, {"h1": ssh_host_entry(sshd_host, remote_root=elsewhere, sync_checkout=True)})
    write_module(root, "cache", "h1", "redis")
    sshd_host.set_engine("permission no_compose")

    code, lines = await doctor(env, "h1")

    assert code == 4, lines
    install = "on the host, as root, from a checkout of this version: host/install"
    found = dict(failures(lines))
    assert found[
        f"FAIL checkout: git rev-parse HEAD in {elsewhere}: exit 126, the gate's forced command names another ROOT "
        "than remote_root"
    ] == (
        "     fix: make remote_root in hosts.yaml the checkout the forced command names: "
        f"{install} --user {DEPLOY_USER} --key FILE --checkout {elsewhere}"
    )
    member = {True: ", although in group docker", False: ", not in group docker"}
    [engine] = [failed for failed in found if failed.startswith("FAIL docker engine: ")]
    assert engine in {
        f"FAIL docker engine: {DEPLOY_USER} may not use the docker socket (permission denied{m})"
        for m in ("", *member.values())
    }, engine
    assert found[engine] == (
        f"     fix: {install} --user {DEPLOY_USER} (adds it to group docker; or usermod -aG docker {DEPLOY_USER}): "
        "new sessions see it"
    )
    assert found["FAIL compose: `docker compose version` fails (no compose v2 plugin)"] == (
        "     fix: on the host: apt-get install docker-compose-plugin (from Docker's apt repository); host/install "
        "checks it"
    )
    assert found[
        "FAIL sync checkout: hosts.yaml sets sync_checkout, but the host's forced command has no --allow-sync"
    ] == (
        f"     fix: {install} --allow-sync --user {DEPLOY_USER} --key FILE --checkout {elsewhere} (rewrites the "
        "key's line), or set sync_checkout: false and sync by hand (docs/security.md)"
    )
    assert "-    compose ps: not checked (the gate serves another ROOT than remote_root)" in lines
    assert len(found) == 4, lines
    assert "platform-gate:" not in "\n".join(lines) and "denied while" not in "\n".join(lines)  # nothing of the host's


async def test_doctor_fails_for_a_host_not_in_hosts_yaml_or_not_allowed(doctor_env, sshd_host):
    root, env = doctor_env
    write_hosts(root, {"h1": ssh_host_entry(sshd_host), "rooted": ssh_host_entry(sshd_host, user="root")})

    code, lines = await doctor(env, "nowhere")
    [(failed, fix)] = failures(lines)
    assert code == 4 and failed.startswith("FAIL listed: ") and fix.startswith("     fix: add nowhere to "), lines

    code, lines = await doctor(env, "rooted")
    [(failed, fix)] = failures(lines)
    assert code == 4 and failed.startswith("FAIL allowlist: ") and "root" in failed, lines
    assert fix.startswith("     fix: correct rooted's entry in "), fix
    assert sshd_host.calls() == []


class V3Gate:
    """A host still on agent v3: its gate refuses `check --prerequisites`, answers `check`."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, ...]] = []

    async def run(self, host: HostConfig, command: RemoteCommand, *, timeout_s: float) -> RemoteOutput:
        self.sent.append(command.argv)
        if command.argv[2:] == ("--prerequisites",):
            return RemoteOutput(returncode=126, stdout="", stderr="platform-gate: command not allowed", duration_s=0.1)
        answer = {"agent": 3, "verb": "check", "run": None, "answer": "checked", "lease_ttl": 600, "leases": []}
        return RemoteOutput(returncode=0, stdout=json.dumps(answer), stderr="", duration_s=0.1)


@pytest.mark.parametrize("sync_checkout", [False, True])
async def test_a_v3_agent_still_serves_a_host_without_sync_and_fails_one_that_asks_for_it(sync_checkout):
    host = HostConfig(name="h", address="h.example", user="deploy", remote_root="/opt/platform",
                      sync_checkout=sync_checkout)  # fmt: skip
    report, gate = doctor_module.Report(), V3Gate()
    answer = await doctor_module._agent(gate, host, report)  # type: ignore[arg-type]
    assert gate.sent == [("platform-agent", "check", "--prerequisites"), ("platform-agent", "check")]
    install = "on the host, as root, from a checkout of this version: host/install --user deploy"
    if sync_checkout:
        assert answer is None and report.failed
        assert report.lines[:2] == [
            "FAIL host agent: v3, older than v4 (sync_checkout needs it)",
            f"     fix: {install}",
        ]
    else:
        assert answer is not None and answer.lease_ttl == 600 and not report.failed
        assert report.lines[0] == (
            "OK   host agent: v3, behind the gate, leases expire 600 s after their run last spoke (v5, from "
            f"{install}, also runs a plan's recreate and restart; older agents refuse those plans)"
        )
