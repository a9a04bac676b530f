"""Reading module.yaml, hosts.yaml and policy.yaml: broken is ToolError, unsafe is PolicyViolation."""

from __future__ import annotations

import os

import pytest
import yaml

from platformctl import config
from platformctl.config import DEFAULT_SACRED_PATHS, Settings, _read_yaml, load_hosts, load_module, load_sacred_paths
from platformctl.outcomes import PolicyViolation, ToolError
from tests.platform_files import host_doc, module_doc, write_platform


def write_module(root, doc: dict, folder: str | None = None) -> None:
    path = root / "modules" / (folder or doc["id"]) / "module.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))


# ---- load_module ----------------------------------------------------------------


def test_load_module_reads_the_contract_fields(tmp_path):
    write_module(tmp_path, module_doc(up_timeout_seconds=60, health={"stable_seconds": 10, "timeout_seconds": 90}))
    module = load_module(tmp_path, "honcho-redis")
    assert (module.id, module.host) == ("honcho-redis", "rs2000")
    assert module.spec.runtime.compose_file == "compose/core/compose.yaml"
    assert module.compose_service == "honcho-redis"  # defaults to the id
    assert module.spec.runtime.up_timeout_seconds == 60
    assert (module.spec.health.stable_seconds, module.spec.health.timeout_seconds) == (10, 90)


def test_defaults_when_optional_fields_are_absent(tmp_path):
    write_module(tmp_path, module_doc())
    module = load_module(tmp_path, "honcho-redis")
    assert module.spec.runtime.up_timeout_seconds == 300
    assert (module.spec.health.stable_seconds, module.spec.health.timeout_seconds) == (30, 180)


def test_explicit_compose_service_wins(tmp_path):
    write_module(tmp_path, module_doc(compose_service="redis"))
    assert load_module(tmp_path, "honcho-redis").compose_service == "redis"


def test_id_must_equal_the_folder(tmp_path):
    write_module(tmp_path, module_doc("postgres"), folder="honcho-redis")
    with pytest.raises(PolicyViolation, match="declares id 'postgres': id and folder must agree"):
        load_module(tmp_path, "honcho-redis")


def test_unknown_module(tmp_path):
    write_module(tmp_path, module_doc())
    with pytest.raises(PolicyViolation, match="unknown module 'postgres'"):
        load_module(tmp_path, "postgres")


@pytest.mark.parametrize("module_id", ["../honcho-redis", "..", "honcho-redis/../honcho-redis", "/etc", "Honcho", ""])
def test_module_id_is_checked_before_any_path_is_built(tmp_path, module_id):
    write_module(tmp_path, module_doc())
    with pytest.raises(PolicyViolation, match="invalid module id"):
        load_module(tmp_path, module_id)


@pytest.mark.parametrize(
    "text",
    ["id: [unclosed\n", "id: honcho-redis\n  host: :\n\t- x", "{", "key: 'unterminated\n"],
)
def test_invalid_yaml_is_a_tool_error(tmp_path, text):
    path = tmp_path / "modules" / "honcho-redis" / "module.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ToolError, match="not valid YAML"):
        load_module(tmp_path, "honcho-redis")


def test_a_module_file_that_is_not_utf8_is_a_tool_error(tmp_path):
    path = tmp_path / "modules" / "honcho-redis" / "module.yaml"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"id: honcho-redis\nhost: rs\xff2000\n")
    with pytest.raises(ToolError, match="module.yaml is not UTF-8: invalid start byte at byte 25"):
        load_module(tmp_path, "honcho-redis")


def test_a_rewrite_is_seen_however_quick_and_same_sized(tmp_path):
    # Parsed files are kept by their bytes: a rewrite of the same size within
    # one mtime tick (here: the old mtime put back) is still read.
    write_module(tmp_path, module_doc(host="rs2000"))
    path = tmp_path / "modules" / "honcho-redis" / "module.yaml"
    assert load_module(tmp_path, "honcho-redis").host == "rs2000"
    before = path.stat()
    path.write_text(path.read_text().replace("rs2000", "rs9999"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert load_module(tmp_path, "honcho-redis").host == "rs9999"


def test_a_caller_changing_what_it_read_does_not_change_the_next_read(tmp_path):
    write_platform(tmp_path, hosts={"rs2000": host_doc(tmp_path)})
    first = _read_yaml(tmp_path / "hosts.yaml")
    first["hosts"]["rs2000"]["user"] = "root"
    assert _read_yaml(tmp_path / "hosts.yaml")["hosts"]["rs2000"]["user"] == "deploy"


def test_what_is_kept_of_parsed_files_is_bounded(tmp_path):
    paths = [tmp_path / f"{i}.yaml" for i in range(config._PARSED_MAX + 1)]
    for path in paths:
        path.write_text("a: 1\n")
        _read_yaml(path)
    big = tmp_path / "big.yaml"
    big.write_text("a: '" + "x" * config._PARSED_MAX_BYTES + "'\n")
    _read_yaml(big)
    assert paths[0] not in config._PARSED and paths[-1] in config._PARSED and big not in config._PARSED
    assert len(config._PARSED) == config._PARSED_MAX


@pytest.mark.parametrize(
    "doc",
    [
        None,
        ["honcho-redis"],
        {"id": "honcho-redis", "host": "rs2000"},
        {"id": "honcho-redis", "spec": module_doc()["spec"]},
        module_doc(unexpected_runtime_key=1),
        module_doc(health={"poll_seconds": "1e14"}),
    ],
    ids=["empty", "list", "no-spec", "no-host", "extra-runtime-key", "poll-not-a-number"],
)
def test_schema_errors_are_tool_errors(tmp_path, doc):
    path = tmp_path / "modules" / "honcho-redis" / "module.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ToolError, match="modules/honcho-redis/module.yaml is invalid"):
        load_module(tmp_path, "honcho-redis")


@pytest.mark.parametrize(
    "doc",
    [
        module_doc(up_timeout_seconds=0),
        module_doc(up_timeout_seconds=3601),
        module_doc(health={"stable_seconds": -1}),
        module_doc(health={"timeout_seconds": 0}),
        module_doc(health={"timeout_seconds": 3601}),
        module_doc(health={"poll_seconds": 0}),
        module_doc(health={"poll_seconds": 301}),
        module_doc(health={"poll_seconds": 10**14}),
    ],
    ids=["up-0", "up-too-long", "stable-negative", "health-timeout-0", "health-timeout-too-long", "poll-0",
         "poll-too-long", "poll-1e14"],
)
def test_a_module_file_past_a_bound_is_blocked(tmp_path, doc):
    write_module(tmp_path, doc)
    with pytest.raises(PolicyViolation, match="modules/honcho-redis/module.yaml is past a bound"):
        load_module(tmp_path, "honcho-redis")


@pytest.mark.parametrize("stable, timeout", [(180, 180), (200, 180), (30, 30)])
def test_stable_window_must_fit_inside_the_timeout(tmp_path, stable, timeout):
    write_module(tmp_path, module_doc(health={"stable_seconds": stable, "timeout_seconds": timeout}))
    with pytest.raises(PolicyViolation, match="stable_seconds must be less than health.timeout_seconds"):
        load_module(tmp_path, "honcho-redis")


@pytest.mark.parametrize("timeout, poll, ok", [(360, 1, True), (361, 1, False), (3600, 10, True), (3600, 9, False)])
def test_a_health_check_of_more_than_360_polls_is_blocked(tmp_path, timeout, poll, ok):
    write_module(tmp_path, module_doc(health={"stable_seconds": 5, "timeout_seconds": timeout, "poll_seconds": poll}))
    if ok:
        assert load_module(tmp_path, "honcho-redis").spec.health.timeout_seconds == timeout
        return
    with pytest.raises(PolicyViolation, match="timeout_seconds / health.poll_seconds must be at most 360"):
        load_module(tmp_path, "honcho-redis")


@pytest.mark.parametrize("orchestrator", ["kubernetes", "docker", "Docker-Compose", "shell"])
def test_only_docker_compose(tmp_path, orchestrator):
    write_module(tmp_path, module_doc(orchestrator=orchestrator))
    with pytest.raises(PolicyViolation, match=f"uses orchestrator '{orchestrator}', not docker-compose"):
        load_module(tmp_path, "honcho-redis")


@pytest.mark.parametrize("service", ["-d", "--rm", "a;b", "$(id)", "a b", "`id`", "web\n", "_web", ".web"])
def test_bad_compose_service_name_is_a_policy_violation(tmp_path, service):
    write_module(tmp_path, module_doc(compose_service=service))
    with pytest.raises(PolicyViolation, match="invalid compose service name"):
        load_module(tmp_path, "honcho-redis")


def test_default_service_from_a_valid_id_is_a_valid_service_name(tmp_path):
    write_module(tmp_path, module_doc("0-a"))
    assert load_module(tmp_path, "0-a").compose_service == "0-a"


# ---- load_hosts -----------------------------------------------------------------


def test_load_hosts_reads_every_entry_with_its_name(tmp_path):
    write_platform(tmp_path, hosts={"rs2000": host_doc(tmp_path), "rs3000": host_doc(tmp_path, port=2222)})
    hosts = load_hosts(tmp_path)
    assert sorted(hosts) == ["rs2000", "rs3000"]
    assert hosts["rs3000"].name == "rs3000" and hosts["rs3000"].port == 2222
    assert hosts["rs2000"].port == 22 and hosts["rs2000"].user == "deploy"


def test_missing_hosts_file_is_a_tool_error(tmp_path):
    with pytest.raises(ToolError, match="cannot read hosts.yaml"):
        load_hosts(tmp_path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("hosts: [unclosed\n", "not valid YAML"),
        ("", "must be a mapping with a 'hosts' mapping"),
        ("- rs2000\n", "must be a mapping with a 'hosts' mapping"),
        ("hosts: [rs2000]\n", "must be a mapping with a 'hosts' mapping"),
        ("rs2000:\n  address: x\n", "must be a mapping with a 'hosts' mapping"),
        ("hosts:\n  rs2000: rs2000.example.ts.net\n", "host 'rs2000' must be a mapping"),
        ("hosts:\n  rs2000:\n    address: a\n    remote_root: /opt\n", "host 'rs2000' is invalid: user"),
        (
            "hosts:\n  rs2000:\n    address: a\n    user: deploy\n    remote_root: /opt\n    port: 70000\n",
            "host 'rs2000' is invalid: port",
        ),
        (
            "hosts:\n  rs2000:\n    address: a\n    user: deploy\n    remote_root: /opt\n    proxy_command: nc x\n",
            "host 'rs2000' is invalid: proxy_command",
        ),
    ],
    ids=[
        "bad-yaml", "empty", "list", "hosts-list", "no-hosts-key", "entry-string", "no-user", "bad-port", "unknown-key"
    ],
)
def test_malformed_hosts_file_is_a_tool_error(tmp_path, text, message):
    (tmp_path / "hosts.yaml").write_text(text)
    with pytest.raises(ToolError, match=message):
        load_hosts(tmp_path)


# ---- load_sacred_paths ----------------------------------------------------------


def test_defaults_without_policy_file(tmp_path):
    assert load_sacred_paths(tmp_path) == DEFAULT_SACRED_PATHS
    assert {".env", ".git/", "secrets/", "/etc/", "/root/"} <= set(DEFAULT_SACRED_PATHS)


@pytest.mark.parametrize(
    "extra",
    [[], ["compose/core/"], ["/srv/backups/", "compose/db.yaml"], [".env", "/etc/"]],
)
def test_policy_file_only_adds_to_the_defaults(tmp_path, extra):
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump({"sacred_paths": extra}))
    paths = load_sacred_paths(tmp_path)
    assert paths[: len(DEFAULT_SACRED_PATHS)] == DEFAULT_SACRED_PATHS
    assert paths[len(DEFAULT_SACRED_PATHS) :] == tuple(extra)


@pytest.mark.parametrize(
    "text",
    [
        "sacred_paths: compose/\n", "sacred_paths: [compose/, 3]\n", "sacred_paths: ['']\n", "- compose/\n",
        "sacred_paths: [\n",
    ],
)
def test_malformed_policy_file_is_a_tool_error(tmp_path, text):
    (tmp_path / "policy.yaml").write_text(text)
    with pytest.raises(ToolError, match="policy.yaml"):
        load_sacred_paths(tmp_path)


def test_relative_key_and_known_hosts_paths_are_read_beside_hosts_yaml(tmp_path):
    pin = "rs2000 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB1Yq9pTmYbLQxkqo7j2y8ysQ6vXg2YxpEo0kKqJSVGo"
    entry = {"address": "a", "user": "deploy", "remote_root": "/opt/p"}
    (tmp_path / "hosts.yaml").write_text(yaml.safe_dump({"hosts": {
        "relative": {**entry, "client_key": "keys/k", "known_hosts": "pins/known_hosts"},
        "absolute": {**entry, "client_key": "/etc/k", "known_hosts": "~/.ssh/known_hosts"},
        "inline": {**entry, "client_key": "~/.ssh/k", "known_hosts": pin},
    }}))
    hosts = load_hosts(tmp_path)
    assert (hosts["relative"].client_key, hosts["relative"].known_hosts) == (
        str(tmp_path / "keys/k"), str(tmp_path / "pins/known_hosts"),
    )
    assert (hosts["absolute"].client_key, hosts["absolute"].known_hosts) == ("/etc/k", "~/.ssh/known_hosts")
    assert (hosts["inline"].client_key, hosts["inline"].known_hosts) == ("~/.ssh/k", pin)


def test_the_heartbeat_timeout_is_a_bounded_worker_setting(tmp_path):
    env = {"PLATFORM_ROOT": str(tmp_path)}
    assert Settings.from_env(env).heartbeat_timeout_seconds == 30
    assert Settings.from_env({**env, "PLATFORM_HEARTBEAT_TIMEOUT_SECONDS": "5"}).heartbeat_timeout_seconds == 5
    for bad in ("4", "601", "30s", "-5", "1e3"):
        with pytest.raises(ValueError, match=f"PLATFORM_HEARTBEAT_TIMEOUT_SECONDS must be .* not '{bad}'"):
            Settings.from_env({**env, "PLATFORM_HEARTBEAT_TIMEOUT_SECONDS": bad})
