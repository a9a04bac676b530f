"""Hostile module files, host entries and plans end the apply before any host is touched.

Every test runs with the phase gate OPEN (harness.phase == "05"), so what
stops the apply is the policy, not the dry run. Each asserts the contract
status, exit code and error type, a message that names the problem, one audit
line, and that the fake transport received nothing.
"""

from __future__ import annotations

import json
import re

import pytest

from platformctl.outcomes import OUTCOMES
from tests.platform_files import PIN, SHA, apply_input, change, host_doc, module_doc, plan, write_platform


@pytest.fixture
def harness(harness):
    assert harness.phase == "05", "these tests must prove policy stops the apply, not the phase gate"
    return harness


async def assert_stopped_before_any_host(harness, request: dict, status: str, message: str):
    out = await harness.apply(request)
    outcome = OUTCOMES[status]
    assert (out.status, out.result["exitCode"], out.error_type) == (status, outcome.exit_code, outcome.error_type)
    assert re.search(message, out.result["error"]), out.result["error"]
    assert harness.transport.calls == []
    assert out.result["remote"] is None and out.result["rollback"] is None
    audit = harness.settings.state_dir / "audit.jsonl"
    assert [json.loads(line)["status"] for line in audit.read_text().splitlines()] == [status]
    return out


# ---- module.yaml -----------------------------------------------------------------


@pytest.mark.parametrize(
    "compose_file, message",
    [
        ("/etc/docker/compose.yml", "must be relative to remote_root, got absolute"),
        ("/opt/platform/compose/core/compose.yaml", "got absolute"),
        ("../compose.yaml", r"must not contain '\.\.'"),
        ("compose/../../x.yml", r"must not contain '\.\.'"),
        ("~/compose.yaml", "must not contain '~'"),
        ("~root/compose.yaml", "must not contain '~'"),
        ("compose.yaml\nrm -rf /", "disallowed component"),
        ("compose\t.yaml", "disallowed component"),
        ("$(id).yml", r"disallowed component '\$\(id\)\.yml'"),
        ("`id`.yml", "disallowed component"),
        ("a;reboot.yml", "disallowed component 'a;reboot.yml'"),
        ("a && reboot.yml", "disallowed component"),
        ("-f.yml", "disallowed component '-f.yml'"),
        ("compose.yaml.sh", r"must end in \.yml or \.yaml"),
        (".git/compose.yml", "touches protected path '.git/'"),
        ("secrets/db.yml", "touches protected path 'secrets/'"),
        (".env/compose.yaml", "touches protected path '.env'"),
    ],
)
async def test_hostile_compose_file_is_blocked(harness, compose_file, message):
    write_platform(harness.root, modules=[module_doc(compose_file=compose_file)])
    await assert_stopped_before_any_host(harness, apply_input(), "blocked", message)


@pytest.mark.parametrize("sacred", ["compose/core/", "/opt/platform/compose"])
async def test_sacred_path_from_policy_file_is_blocked(harness, sacred):
    write_platform(harness.root, policy={"sacred_paths": [sacred]})
    await assert_stopped_before_any_host(harness, apply_input(), "blocked", f"touches protected path '{sacred}'")


@pytest.mark.parametrize("service", ["-d", "--rm", "a;b", "$(id)", "a b", "`id`", "web\nreboot"])
async def test_hostile_compose_service_is_blocked(harness, service):
    write_platform(harness.root, modules=[module_doc(compose_service=service)])
    await assert_stopped_before_any_host(harness, apply_input(), "blocked", "invalid compose service name")


async def test_module_id_not_matching_its_folder_is_blocked(harness):
    doc = module_doc("postgres")
    path = harness.root / "modules" / "honcho-redis" / "module.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    await assert_stopped_before_any_host(harness, apply_input(), "blocked", "id and folder must agree")


async def test_other_orchestrator_is_blocked(harness):
    write_platform(harness.root, modules=[module_doc(orchestrator="kubernetes")])
    await assert_stopped_before_any_host(harness, apply_input(), "blocked", "not docker-compose")


async def test_health_window_longer_than_its_timeout_is_blocked(harness):
    write_platform(harness.root, modules=[module_doc(health={"stable_seconds": 300, "timeout_seconds": 180})])
    await assert_stopped_before_any_host(harness, apply_input(), "blocked", "stable_seconds must be less than")


@pytest.mark.parametrize("host", ["rs9000", "RS2000", "../rs2000", "-oProxyCommand=x"])
async def test_module_on_a_host_not_in_the_allowlist_is_blocked(harness, host):
    write_platform(harness.root, modules=[module_doc(host=host)])
    await assert_stopped_before_any_host(harness, apply_input(), "blocked", "is not in the hosts.yaml allowlist")


# ---- hosts.yaml ------------------------------------------------------------------


@pytest.mark.parametrize(
    "over, message",
    [
        ({"user": "root"}, "user 'root' is not allowed"),
        ({"user": "deploy;id"}, "is not allowed"),
        ({"user": "$(id)"}, "is not allowed"),
        ({"address": "-oProxyCommand=x"}, "invalid address '-oProxyCommand=x'"),
        ({"address": "a b"}, "invalid address 'a b'"),
        ({"known_hosts": ""}, "no pinned SSH host key"),
        ({"known_hosts": "/nonexistent/known_hosts"}, "pinned known_hosts file .* is missing or empty"),
        ({"known_hosts": "rs2000.example.ts.net ssh-ed25519"}, "known_hosts line is not a pinned key"),
        ({"known_hosts": "@revoked " + PIN}, "known_hosts line is not a pinned key"),
        ({"client_key": ""}, "has no client_key"),
        ({"remote_root": "/"}, "remote_root must be a normalized absolute path"),
        ({"remote_root": "opt/platform"}, "remote_root must be a normalized absolute path"),
        ({"remote_root": "/opt/platform/../etc"}, "remote_root must be a normalized absolute path"),
    ],
    ids=[
        "root", "user-semicolon", "user-subst", "address-flag", "address-space", "no-pin", "pin-file-missing",
        "pin-malformed", "pin-revoked", "no-client-key", "root-slash", "root-relative", "root-unnormalized",
    ],
)
async def test_hostile_host_entry_is_blocked(harness, over, message):
    write_platform(harness.root, hosts={"rs2000": host_doc(harness.root, **over)})
    await assert_stopped_before_any_host(harness, apply_input(), "blocked", message)


async def test_empty_pinned_known_hosts_file_is_blocked(harness):
    pin_file = harness.root / "known_hosts"
    pin_file.write_text("\n")
    write_platform(harness.root, hosts={"rs2000": host_doc(harness.root, known_hosts=str(pin_file))})
    await assert_stopped_before_any_host(harness, apply_input(), "blocked", "is missing or empty")


async def test_known_hosts_with_only_comments_is_blocked(harness):
    write_platform(harness.root, hosts={"rs2000": host_doc(harness.root, known_hosts="# pin me later")})
    await assert_stopped_before_any_host(harness, apply_input(), "blocked", "pinned")


async def test_client_key_missing_on_the_worker_is_a_tool_error(harness):
    write_platform(harness.root, hosts={"rs2000": host_doc(harness.root, client_key="/nonexistent/deploy_key")})
    await assert_stopped_before_any_host(harness, apply_input(), "tool_error", "is not a readable file on this worker")


async def test_host_entry_with_an_unknown_key_is_a_tool_error(harness):
    write_platform(harness.root, hosts={"rs2000": host_doc(harness.root, proxy_command="nc evil 22")})
    await assert_stopped_before_any_host(
        harness, apply_input(), "tool_error", "host 'rs2000' is invalid: proxy_command"
    )


# ---- the plan --------------------------------------------------------------------


@pytest.mark.parametrize(
    "plan_, message",
    [
        (plan(module="../x"), r"invalid module id '\.\./x'"),
        (plan(module="honcho-redis/../x"), "invalid module id"),
        (plan(module="postgres"), "unknown module 'postgres'"),
        (plan(changes=[change(), change(service="postgres")]), "one plan per module"),
        (plan(changes=[change(service="postgres")]), "target 'compose.service.postgres'"),
        (plan(source_dirty=True), "dirty tree"),
        (plan(sha="abc123"), "source_sha must be 40 lowercase hex"),
        (plan(sha=SHA.upper()), "source_sha must be 40 lowercase hex"),
        (plan(sha="z" * 40), "source_sha must be 40 lowercase hex"),
        (plan(changes=[{"target": "compose.service.honcho-redis\nx", "action": "update"}]), "must be exactly"),
        (plan(changes=[{"target": "Compose.Service.honcho-redis", "action": "update"}]), "must be exactly"),
        (plan(changes=[{"target": " compose.service.honcho-redis", "action": "update"}]), "must be exactly"),
        (plan(changes=[{"target": "module.honcho-redis", "action": "update"}]), "must be exactly"),
    ],
    ids=[
        "module-traversal", "module-nested-traversal", "unknown-module", "multi-module", "other-module-only",
        "dirty-tree", "short-sha", "upper-sha", "non-hex-sha", "target-newline",
        "target-other-case", "target-leading-space", "target-module-kind",
    ],
)
async def test_hostile_plan_is_blocked(harness, plan_, message):
    await assert_stopped_before_any_host(harness, apply_input(plan_), "blocked", message)


async def test_multi_module_plan_applies_neither_module(harness):
    write_platform(harness.root, modules=[module_doc(), module_doc("postgres")])
    both = plan(changes=[change(), change(service="postgres")])
    out = await assert_stopped_before_any_host(harness, apply_input(both), "blocked", "one plan per module")
    assert out.result["command"] is None
