"""The command builders: the only shapes that can reach a host, quoted part by part."""

from __future__ import annotations

import json
import shlex

import pytest

from platformctl import commands
from platformctl.commands import UnsafeCommand

PATH = "/opt/platform/compose/core/compose.yaml"
IMAGE = "sha256:" + "0123456789abcdef" * 4


def rollback(path: str, service: str) -> commands.RemoteCommand:
    return commands.compose_rollback(path, service, IMAGE)


BUILDERS = [commands.compose_up, commands.compose_ps, commands.compose_images, rollback]


def test_compose_up_is_exactly_the_contract_command():
    up = commands.compose_up(PATH, "honcho-redis")
    assert up.kind == "compose_up"
    assert up.argv == ("docker", "compose", "-f", PATH, "up", "-d", "honcho-redis")
    assert up.render() == f"docker compose -f {PATH} up -d honcho-redis"


def test_compose_ps_is_exactly_the_contract_command():
    ps = commands.compose_ps(PATH, "honcho-redis")
    assert ps.kind == "compose_ps"
    assert ps.render() == f"docker compose -f {PATH} ps --all --format json honcho-redis"
    before_all = commands.compose_ps_running(PATH, "honcho-redis")
    assert before_all.kind == "compose_ps"
    assert before_all.render() == f"docker compose -f {PATH} ps --format json honcho-redis"


def test_git_head_is_read_only():
    assert commands.git_head("/opt/platform").render() == "git -C /opt/platform rev-parse HEAD"


def test_compose_images_is_exactly_the_contract_command():
    images = commands.compose_images(PATH, "honcho-redis")
    assert images.kind == "compose_images"
    assert images.argv == ("docker", "compose", "-f", PATH, "images", "--format", "json", "honcho-redis")
    assert images.render() == f"docker compose -f {PATH} images --format json honcho-redis"
    assert images.stdin is None


def test_compose_rollback_is_exactly_the_contract_command_with_the_pin_on_stdin():
    back = commands.compose_rollback(PATH, "honcho-redis", IMAGE)
    assert back.kind == "compose_rollback"
    assert back.argv == (
        "docker", "compose", "-f", PATH, "-f", "-",
        "up", "-d", "--no-deps", "--no-build", "--pull", "never", "honcho-redis",
    )
    assert back.render() == (
        f"docker compose -f {PATH} -f - up -d --no-deps --no-build --pull never honcho-redis"
    )
    assert back.stdin == b'{"services":{"honcho-redis":{"image":"' + IMAGE.encode() + b'"}}}'


def test_stdin_is_never_part_of_the_rendered_command():
    back = commands.compose_rollback(PATH, "web", IMAGE)
    assert IMAGE not in back.render() and "services" not in back.render()
    assert back.render() == commands.RemoteCommand(back.kind, back.argv).render()


@pytest.mark.parametrize("builder", [commands.compose_up, commands.compose_ps, commands.compose_images])
def test_other_commands_carry_no_stdin(builder):
    assert builder(PATH, "web").stdin is None
    assert commands.git_head("/opt/platform").stdin is None


@pytest.mark.parametrize("service", ["web", "honcho-redis", "Redis_2", "a.b-c_d", "0"])
def test_image_pin_is_the_compact_canonical_json(service):
    pin = commands.image_pin(service, IMAGE)
    assert pin == b'{"services":{"' + service.encode() + b'":{"image":"' + IMAGE.encode() + b'"}}}'
    assert pin == json.dumps({"services": {service: {"image": IMAGE}}}, separators=(",", ":")).encode("ascii")
    assert not pin.endswith(b"\n") and b" " not in pin
    assert commands.compose_rollback(PATH, service, IMAGE).stdin == pin


@pytest.mark.parametrize(
    "image_id",
    [
        "redis:7",
        "redis@" + IMAGE,
        "0123456789abcdef" * 4,  # no algorithm
        "sha256:" + "0123456789ABCDEF" * 4,  # uppercase
        "sha256:" + "0" * 63,  # short
        "sha256:" + "0" * 65,  # long
        "sha256:" + "g" * 64,
        "sha512:" + "0" * 128,
        "SHA256:" + "0" * 64,
        "sha256:" + "0" * 12,  # docker's short ID
        IMAGE + "\n",
        " " + IMAGE,
        IMAGE + '"}},"x":{"image":"' + IMAGE,  # JSON injection
        "",
    ],
)
def test_image_pin_and_rollback_refuse_anything_but_a_full_image_id(image_id):
    with pytest.raises(UnsafeCommand, match="not an image ID"):
        commands.image_pin("web", image_id)
    with pytest.raises(UnsafeCommand, match="not an image ID"):
        commands.compose_rollback(PATH, "web", image_id)


@pytest.mark.parametrize("service", ["-d", "a b", '"x"', 'a"}', "$(id)", "", "web\n", "wéb"])
def test_image_pin_refuses_bad_service_names(service):
    with pytest.raises(UnsafeCommand, match="not a compose service name"):
        commands.image_pin(service, IMAGE)


def test_image_pin_refuses_a_pin_the_gate_would_not_read():
    longest = "s" * (commands.PIN_MAX_BYTES - len(commands.image_pin("s", IMAGE)) + 1)
    assert len(commands.image_pin(longest, IMAGE)) == commands.PIN_MAX_BYTES
    with pytest.raises(UnsafeCommand, match="longer than"):
        commands.image_pin(longest + "s", IMAGE)


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
@pytest.mark.parametrize("builder", BUILDERS)
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
@pytest.mark.parametrize("builder", BUILDERS)
def test_builders_reject_relative_unnormalized_and_control_paths(builder, path):
    with pytest.raises(UnsafeCommand, match="not a normalized absolute path"):
        builder(path, "honcho-redis")


@pytest.mark.parametrize("path", ["/opt/platform/compose.json", "/opt/platform/compose", "/opt/platform", "-"])
@pytest.mark.parametrize("builder", BUILDERS)
def test_builders_reject_non_compose_files(builder, path):
    with pytest.raises(UnsafeCommand, match="not a compose file|not a normalized absolute path"):
        builder(path, "honcho-redis")


@pytest.mark.parametrize(
    "service",
    ["-d", "--rm", "--help", "a;b", "$(id)", "`id`", "a b", "a|b", "a&&b", "",
     "web\n", "web\x00", ".hidden", "_x", "wéb"],
)
@pytest.mark.parametrize("builder", BUILDERS)
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
