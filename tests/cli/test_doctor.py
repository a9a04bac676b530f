"""`platform-apply doctor HOST` against the real test sshd: only the read-only
commands of platformctl/commands.py reach the host."""

from __future__ import annotations

import asyncio

import pytest

from platformctl.commands import AGENT_PROTOCOL
from tests.cli.conftest import PLATFORM_APPLY
from tests.e2e.conftest import compose_ps_argv, ssh_host_entry, write_hosts, write_module, wrong_host_key_line
from tests.platform_files import SHA
from tests.sshd import LEASE_TTL_S


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
    assert not [line for line in lines if line.startswith("FAIL")], lines
    for check in ("allowlist", "reachable", "host key", "client key"):
        assert any(line.startswith(f"OK   {check}: ") for line in lines), (check, lines)
    assert f"OK   checkout: {sshd_host.remote_root} is at {SHA}" in lines
    assert f"OK   compose ps redis: {sshd_host.compose_path} (running, healthy)" in lines
    ttl = f"leases expire {LEASE_TTL_S} s after their run last spoke"
    assert f"OK   host agent: v{AGENT_PROTOCOL}, behind the gate, {ttl}" in lines
    assert "OK   leases: none held" in lines
    assert "-    compose version: not checked (no allowed command prints it)" in lines
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
    [failed] = [line for line in lines if line.startswith("FAIL")]
    assert failed == (
        f"FAIL health poll of cache: every {slow} s, more than a third of the host's lease TTL ({LEASE_TTL_S} s): "
        f"lower health.poll_seconds to {LEASE_TTL_S // 3} or less, or raise the gate's --lease-ttl"
    )


async def test_doctor_says_when_a_hosts_gate_predates_ps_all(doctor_env, sshd_host):
    root, env = doctor_env
    write_hosts(root, {"h1": ssh_host_entry(sshd_host)})
    write_module(root, "cache", "h1", "redis")
    sshd_host.set_behaviour("redis", "gate_before_all")

    code, lines = await doctor(env, "h1")

    assert code == 4, lines
    [failed] = [line for line in lines if line.startswith("FAIL")]
    assert failed.startswith(f"FAIL compose ps redis: {sshd_host.compose_path}: the host's gate refused `ps --all`")
    assert failed.endswith("install the current host/platform-gate"), failed


async def test_doctor_fails_on_a_wrong_pinned_key_and_sends_nothing(doctor_env, sshd_host, tmp_path):
    root, env = doctor_env
    write_hosts(root, {"h1": ssh_host_entry(sshd_host, known_hosts=wrong_host_key_line(sshd_host, tmp_path))})
    write_module(root, "cache", "h1", "redis")

    code, lines = await doctor(env, "h1")

    assert code == 4, lines
    assert any(line.startswith("OK   reachable: ") for line in lines), lines
    assert any(line.startswith("FAIL host key: ") and "pinned" in line for line in lines), lines
    assert sshd_host.calls() == []


async def test_doctor_fails_for_a_host_not_in_hosts_yaml_or_not_allowed(doctor_env, sshd_host):
    root, env = doctor_env
    write_hosts(root, {"h1": ssh_host_entry(sshd_host), "rooted": ssh_host_entry(sshd_host, user="root")})

    code, lines = await doctor(env, "nowhere")
    assert code == 4 and any(line.startswith("FAIL listed: ") for line in lines), lines

    code, lines = await doctor(env, "rooted")
    assert code == 4 and any(line.startswith("FAIL allowlist: ") and "root" in line for line in lines), lines
    assert sshd_host.calls() == []
