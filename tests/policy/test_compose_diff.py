"""The planner's pure rules (platformctl.policy.compose_diff): interpolation, comparison, action."""

from __future__ import annotations

import pytest

from platformctl.policy.compose_diff import (
    SUMMARY_MAX,
    ComposeError,
    Interpolation,
    bind_sources,
    changed_keys,
    decide,
    env_files,
    interpolate,
    interpolate_text,
    parse_dotenv,
)

ENV = {"SET": "v", "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected", "unset"),
    [
        ("$SET-x", "v-x", []),
        ("${SET}", "v", []),
        ("a$$SET", "a$SET", []),
        ("${NOPE:-d}", "d", []),
        ("${EMPTY:-d}", "d", []),
        ("${EMPTY-d}", "", []),
        ("${NOPE-d}", "d", []),
        ("${SET:+r}", "r", []),
        ("${EMPTY:+r}", "", []),
        ("${EMPTY+r}", "r", []),
        ("${NOPE+r}", "", []),
        ("${SET:?e}", "v", []),
        ("${NOPE:?must be set}", "${NOPE:?must be set}", ["NOPE"]),
        ("${EMPTY:?e}", "${EMPTY:?e}", ["EMPTY"]),
        ("${EMPTY?e}", "", []),
        ("${NOPE}", "${NOPE}", ["NOPE"]),
        ("$NOPE/x", "$NOPE/x", ["NOPE"]),
        ("${NOPE:-${SET}}", "v", []),
        ("${NOPE:-${ALSO:-deep}}", "deep", []),
        ("cost: 5$", "cost: 5$", []),
    ],
)
def test_interpolation_follows_compose(text, expected, unset):
    ctx = Interpolation(env=ENV)
    assert interpolate_text(text, ctx) == expected
    assert ctx.unset == unset


@pytest.mark.parametrize("text", ["${SET", "${}", "${SET!x}"])
def test_a_broken_interpolation_is_refused_without_its_text(text):
    with pytest.raises(ComposeError) as raised:
        interpolate_text(text, Interpolation(env={"SET": "secret-value"}))
    assert "secret-value" not in str(raised.value)


def test_interpolate_walks_values_not_keys_and_bounds_alias_bombs():
    assert interpolate({"$SET": ["$SET", 3, {"k": "${SET}"}]}, Interpolation(env=ENV)) == {"$SET": ["v", 3, {"k": "v"}]}
    bomb: list = ["x"]
    for _ in range(30):  # what YAML anchors give: each level refers to the one below twice
        bomb = [bomb, bomb]
    with pytest.raises(ComposeError, match="YAML nodes"):
        interpolate(bomb, Interpolation(env={}))


def test_dotenv_as_compose_reads_it():
    text = "# comment\nA=1\nexport B = two # note\nC='$A lit'\nD=\"x${A}y\"\nE=$A$A\n\nnot a line\n"
    assert parse_dotenv(text) == {"A": "1", "B": "two", "C": "$A lit", "D": "x1y", "E": "11"}


def test_changed_keys_name_keys_and_mapping_entries_never_values():
    old = {"image": "redis:7", "environment": ["PASSWORD=old-secret", "KEEP=1"], "ports": ["6379:6379"]}
    new = {"image": "redis:8", "environment": {"PASSWORD": "new-secret", "KEEP": "1", "ADDED": "x"}}
    new["restart"] = "always"
    keys = changed_keys(old, new)
    assert keys == ["environment.ADDED", "environment.PASSWORD", "image", "ports", "restart"]
    assert not any("secret" in k for k in keys)
    assert changed_keys(new, dict(new)) == []
    assert changed_keys({"labels": {}}, {}) == ["labels"]


def test_bind_sources_are_repository_paths_only():
    service = {
        "volumes": [
            "./conf/redis.conf:/etc/redis.conf:ro",
            "../shared:/shared",
            "../../../escape:/x",
            "/etc/hosts:/etc/hosts",
            "data:/data",
            {"type": "bind", "source": "./long", "target": "/l"},
            {"type": "volume", "source": "./not-bind", "target": "/v"},
        ]
    }
    expected = ["compose/core/conf/redis.conf", "compose/core/long", "compose/shared"]
    assert bind_sources(service, "compose/core") == expected
    assert bind_sources({"volumes": "nope"}, "") == []


def test_decide_names_the_action():
    svc = {"image": "a"}
    assert decide(None, None, 0, False) is None
    assert decide(None, svc, 0, False) == ("create", "create: service added")
    assert decide(svc, None, 0, True)[0] == "remove"
    assert decide(svc, {"image": "b"}, 3, False) == ("update", "update: image")
    assert decide(svc, {"image": "b"}, 0, True) == ("recreate", "recreate: image")
    assert decide(svc, dict(svc), 1, False) == ("restart", "restart: 1 bind-mounted repository file changed (volumes)")
    assert decide(svc, dict(svc), 2, True)[0] == "recreate"
    assert decide(svc, dict(svc), 0, False) is None
    assert decide(svc, dict(svc), 0, True)[0] == "recreate"


def test_a_summary_is_capped():
    old = {f"key{i:03}": 1 for i in range(200)}
    action, summary = decide(old, {}, 0, False) or ("", "")
    assert action == "update" and len(summary) == SUMMARY_MAX and summary.endswith("...")


def test_env_files_are_repository_paths_and_their_content_is_configuration():
    service = {"env_file": ["./app.env", {"path": "../shared.env", "required": False}, "/etc/host.env", "../../../x"]}
    assert env_files(service, "compose/core") == ["compose/core/app.env", "compose/shared.env"]
    assert env_files({"env_file": "app.env"}, "") == ["app.env"]
    svc = {"image": "a", "env_file": "app.env"}
    assert decide(svc, dict(svc), 0, False, env_files_changed=1) == ("update", "update: env_file (content)")
    assert decide(svc, {**svc, "image": "b"}, 0, False, 1) == ("update", "update: image, env_file (content)")
