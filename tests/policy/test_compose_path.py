"""Step 3 policy: `guard_compose_path` with hostile inputs.

What it returns is the path compose is given, so the tests pin that string
exactly, not just that no error was raised.
"""

from __future__ import annotations

import pytest

from platformctl.config import DEFAULT_SACRED_PATHS
from platformctl.outcomes import PolicyViolation
from platformctl.policy.compose_path import check_remote_root, guard_compose_path

ROOT = "/opt/platform"


def guard(compose_file: str, root: str = ROOT, sacred: tuple[str, ...] = DEFAULT_SACRED_PATHS) -> str:
    return guard_compose_path(compose_file, root, sacred)


@pytest.mark.parametrize(
    "compose_file, expected",
    [
        ("compose.yaml", "/opt/platform/compose.yaml"),
        ("compose/core/compose.yaml", "/opt/platform/compose/core/compose.yaml"),
        ("./compose/./core/compose.yml", "/opt/platform/compose/core/compose.yml"),
        ("compose//core///compose.yaml", "/opt/platform/compose/core/compose.yaml"),
        ("stack@2/c+d_e.f-g.yaml", "/opt/platform/stack@2/c+d_e.f-g.yaml"),
        (".hidden/compose.yaml", "/opt/platform/.hidden/compose.yaml"),
        (".env.yml", "/opt/platform/.env.yml"),
        ("secrets.yml", "/opt/platform/secrets.yml"),
    ],
)
def test_returned_path_is_remote_root_slash_normalized_relative_path(compose_file, expected):
    assert guard(compose_file) == expected


@pytest.mark.parametrize(
    "compose_file, message",
    [
        ("/opt/platform/compose.yaml", "absolute"),
        ("/etc/passwd.yml", "absolute"),
        ("../compose.yaml", r"'\.\.'"),
        ("compose/../../x.yml", r"'\.\.'"),
        ("a/../../x.yml", r"'\.\.'"),
        ("compose/..", r"'\.\.'"),
        ("~/compose.yaml", "'~'"),
        ("~deploy/compose.yaml", "'~'"),
        ("compose/~/x.yaml", "'~'"),
        ("", "empty"),
    ],
)
def test_paths_that_leave_remote_root_are_rejected(compose_file, message):
    with pytest.raises(PolicyViolation, match=message):
        guard(compose_file)


@pytest.mark.parametrize(
    "compose_file",
    [
        "compose.yaml\n",
        "compose\n.yaml",
        "compose.yaml\nrm -rf /",
        "comp\tose.yaml",
        "compose\x00.yaml",
        "compose\x7f.yaml",
        "compose\r.yaml",
        "$(id).yml",
        "compose/$(id)/x.yml",
        "`id`.yml",
        "a;b.yml",
        "a;rm -rf /;.yml",
        "a|b.yml",
        "a&&b.yml",
        "a&b.yml",
        "my compose.yaml",
        "${HOME}.yml",
        "a>b.yml",
        "a'b.yml",
        'a"b.yml',
        "a\\b.yml",
        "a*.yml",
        "-f.yml",
        "--help.yml",
        "compose/-rf.yml",
        "compose/--project-directory=x.yml",
        "compösé.yml",
    ],
)
def test_control_shell_and_flag_like_characters_are_rejected(compose_file):
    with pytest.raises(PolicyViolation, match="disallowed component"):
        guard(compose_file)


@pytest.mark.parametrize("compose_file", ["compose.json", "compose.yaml.bak", "compose", "compose.YML", "compose/"])
def test_only_yml_and_yaml_files(compose_file):
    with pytest.raises(PolicyViolation, match=r"must end in \.yml or \.yaml"):
        guard(compose_file)


@pytest.mark.parametrize(
    "compose_file",
    [".env/compose.yml", ".git/compose.yaml", ".git/hooks/x.yml", "secrets/compose.yaml", "./secrets/db.yml"],
)
def test_default_sacred_paths(compose_file):
    with pytest.raises(PolicyViolation, match="touches protected path"):
        guard(compose_file)


@pytest.mark.parametrize("root", ["/etc/platform", "/root/platform", "/etc"])
def test_absolute_default_sacred_paths_cover_a_root_inside_them(root):
    with pytest.raises(PolicyViolation, match="touches protected path '/(etc|root)/'"):
        guard("compose.yaml", root=root)


def test_sacred_prefix_is_a_path_prefix_not_a_string_prefix():
    assert guard("secretsauce/compose.yaml") == "/opt/platform/secretsauce/compose.yaml"
    assert guard("compose/secrets/x.yml") == "/opt/platform/compose/secrets/x.yml"


@pytest.mark.parametrize(
    "sacred, compose_file",
    [
        ("compose/core/", "compose/core/compose.yaml"),
        ("compose/core", "compose/core/compose.yaml"),
        ("compose/core/compose.yaml", "compose/core/compose.yaml"),
        ("./compose", "compose/x.yml"),
        ("/opt/platform/compose/", "compose/core/compose.yaml"),
        ("/opt/platform/compose/core/compose.yaml", "./compose/core/compose.yaml"),
        ("/opt/", "compose.yaml"),
    ],
)
def test_custom_sacred_paths_relative_and_absolute(sacred, compose_file):
    with pytest.raises(PolicyViolation, match="touches protected path"):
        guard(compose_file, sacred=DEFAULT_SACRED_PATHS + (sacred,))
    # The same file is fine without that entry.
    assert guard(compose_file).startswith(ROOT + "/")


def test_custom_sacred_path_does_not_cover_its_siblings():
    sacred = DEFAULT_SACRED_PATHS + ("compose/core/",)
    assert guard("compose/core2/compose.yaml", sacred=sacred) == "/opt/platform/compose/core2/compose.yaml"


@pytest.mark.parametrize(
    "root",
    [
        "/",
        "//",
        "opt/platform",
        "./opt",
        "",
        "/opt/platform/",
        "/opt//platform",
        "/opt/./platform",
        "/opt/../platform",
        "//opt/platform",
        "/opt/plat form",
        "/opt/$(id)",
        "/opt/-x",
        "/opt/plat\nform",
        "~/platform",
    ],
)
def test_remote_root_must_be_normalized_absolute_and_not_slash(root):
    with pytest.raises(PolicyViolation, match="remote_root must be a normalized absolute path"):
        check_remote_root(root)
    with pytest.raises(PolicyViolation, match="remote_root"):
        guard("compose.yaml", root=root)


@pytest.mark.parametrize("root", ["/opt/platform", "/srv", "/home/deploy/platform-1"])
def test_good_remote_roots(root):
    assert check_remote_root(root) == root
    assert guard("c.yml", root=root) == root + "/c.yml"
