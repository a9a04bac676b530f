"""The command builders: the only shapes that can reach a host, quoted part by part."""

from __future__ import annotations

import shlex

import pytest

from platformctl import commands
from platformctl.commands import UnsafeCommand

PATH = "/opt/platform/compose/core/compose.yaml"


def test_compose_up_is_exactly_the_contract_command():
    up = commands.compose_up(PATH, "honcho-redis")
    assert up.kind == "compose_up"
    assert up.argv == ("docker", "compose", "-f", PATH, "up", "-d", "honcho-redis")
    assert up.render() == f"docker compose -f {PATH} up -d honcho-redis"


def test_compose_ps_is_exactly_the_contract_command():
    ps = commands.compose_ps(PATH, "honcho-redis")
    assert ps.kind == "compose_ps"
    assert ps.render() == f"docker compose -f {PATH} ps --format json honcho-redis"


def test_git_head_is_read_only():
    assert commands.git_head("/opt/platform").render() == "git -C /opt/platform rev-parse HEAD"


@pytest.mark.parametrize(
    "path",
    [
        PATH,
        "/opt/my platform/compose.yaml",
        "/opt/$(id)/compose.yaml",
        "/opt/`id`/c.yml",
        "/opt/a;b/c.yml",
        "/opt/it's/c.yml",
        '/opt/"q"/c.yml',
        "/opt/a|b&&c/c.yml",
        "/opt/$HOME/c.yml",
    ],
)
@pytest.mark.parametrize("builder", [commands.compose_up, commands.compose_ps])
def test_render_is_quoted_and_round_trips(builder, path):
    command = builder(path, "honcho-redis")
    rendered = command.render()
    assert shlex.split(rendered) == list(command.argv)
    assert rendered == " ".join(shlex.quote(part) for part in command.argv)


def test_a_path_needing_quotes_is_rendered_as_one_quoted_word():
    rendered = commands.compose_up("/opt/$(id)/c.yml", "web").render()
    assert "'/opt/$(id)/c.yml'" in rendered


@pytest.mark.parametrize(
    "path",
    [
        "compose.yaml",
        "opt/platform/compose.yaml",
        "./compose.yaml",
        "~/compose.yaml",
        "/opt/platform/../etc/compose.yaml",
        "/opt//platform/compose.yaml",
        "/opt/./platform/compose.yaml",
        "//opt/platform/compose.yaml",
        "/opt/platform/compose.yaml\n",
        "/opt/platform/compose.yaml\nrm -rf /",
        "/opt/plat\x00form/compose.yaml",
        "/opt/plat\tform/compose.yaml",
        "/opt/plat\x7fform/compose.yaml",
        "",
    ],
)
@pytest.mark.parametrize("builder", [commands.compose_up, commands.compose_ps])
def test_builders_reject_relative_unnormalized_and_control_paths(builder, path):
    with pytest.raises(UnsafeCommand, match="not a normalized absolute path"):
        builder(path, "honcho-redis")


@pytest.mark.parametrize("path", ["/opt/platform/compose.json", "/opt/platform/compose", "/opt/platform"])
def test_builders_reject_non_compose_files(path):
    with pytest.raises(UnsafeCommand, match="not a compose file"):
        commands.compose_up(path, "honcho-redis")


@pytest.mark.parametrize(
    "service",
    ["-d", "--rm", "--help", "a;b", "$(id)", "`id`", "a b", "a|b", "a&&b", "",
     "web\n", "web\x00", ".hidden", "_x", "wéb"],
)
@pytest.mark.parametrize("builder", [commands.compose_up, commands.compose_ps])
def test_builders_reject_flag_like_and_shell_like_service_names(builder, service):
    with pytest.raises(UnsafeCommand, match="not a compose service name"):
        builder(PATH, service)


@pytest.mark.parametrize("service", ["web", "honcho-redis", "Redis_2", "a.b-c_d", "0"])
def test_valid_service_names_pass_unchanged(service):
    assert commands.compose_up(PATH, service).argv[-1] == service


@pytest.mark.parametrize("root", ["opt/platform", "/opt/../etc", "/opt/platform/", "/opt\n"])
def test_git_head_rejects_bad_roots(root):
    with pytest.raises(UnsafeCommand):
        commands.git_head(root)
