"""host/platform-gate: run as sshd would (SSH_ORIGINAL_COMMAND), and behind a real sshd."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import posixpath
import pwd
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platformctl.commands import (
    PIN_MAX_BYTES,
    RemoteCommand,
    compose_images,
    compose_ps,
    compose_ps_running,
    compose_rollback,
    compose_up,
    git_head,
    image_pin,
)
from platformctl.transport.ssh import SshTransport
from tests.sshd import (
    COMPOSE_FILE,
    GATE,
    GATE_CODE,
    STAND_IN_BIN,
    SYSTEM_PATH,
    accounts_lock,
    eventually,
    install_gate,
    process_running,
    serve,
    unavailable_reason,
    wait_until,
)

REFUSED = 126
IMAGE = "sha256:" + "ab" * 32
ROLLBACK_FLAGS = "-f - up -d --no-deps --no-build --pull never"
# The tests run as root (the sshd ones must) and the gate refuses uid 0, so
# the gate on its own runs with a non-root euid faked; the uid-0 tests don't.
AS_NON_ROOT = (
    "import os, runpy, sys; os.geteuid = lambda: 65534; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
ROOT_REFUSAL = "platform-gate: refusing to run as root (uid 0); use a non-root deploy user\n"
# A uid-0 account with a harmless-looking name, as a careless host setup might create.
ROOT_ALIAS = "platform-deploy0"


def injections(root: str) -> list[str]:
    compose = f"{root}/{COMPOSE_FILE}"
    up = f"docker compose -f {compose} up -d"
    return [
        f"{up} redis; id",
        f"{up} redis;id",
        f"{up} $(id)",
        f"{up} `id`",
        f"{up} redis && id",
        f"{up} redis || id",
        f"docker compose -f {compose} ps --format json redis | sh",
        f"{up} redis > {root}/owned",
        f"{up} redis\nid",
        f"{up} redis\n",  # harmless once split, but no honest client sends it
        f"{up} redis\rid",
        f"docker compose -f {root}/../etc/compose.yaml up -d redis",
        f"docker compose -f {root}/compose/../../../etc/compose.yaml up -d redis",
        f"docker compose -f {root}//compose/core/compose.yaml up -d redis",
        "docker compose -f /etc/compose.yaml up -d redis",
        f"docker compose -f {posixpath.dirname(root)}/alias.yaml up -d redis",  # symlink into ROOT
        f"docker compose -f {root}/compose/escape.yaml up -d redis",  # symlink out of ROOT
        f"docker compose -f {root}/compose/core/compose.txt up -d redis",
        f"docker compose -f {compose} -f /etc/other.yaml up -d redis",
        f"docker compose -f {compose} up -d redis --build",
        f"docker compose -f {compose} up -d redis other",
        f"{up}",
        f"{up} -redis",
        f"{up} 'redis x'",
        f"docker compose -f {compose} ps redis",
        f"docker compose -f {compose} down",
        f'docker compose -f "{compose} up -d redis',  # unbalanced quote
        "docker run --rm -v /:/host alpine sh",
        "docker",
        "sh -c id",
        "/bin/sh",
        "id",
        f"git -C {root} log",
        f"git -C {root}/.. rev-parse HEAD",
        "git -C / rev-parse HEAD",
        f"git -C {root} rev-parse HEAD; id",
        "",
        f"docker compose -f {root}/secrets/x.yml up -d redis",
        f"docker compose -f {root}/.git/hooks/compose.yaml up -d redis",
        f"docker compose -f {root}/compose/evil.yml up -d redis",  # symlink to secrets/x.yml
        f"docker compose -f {root}/compose/env.yml ps --format json redis",  # symlink to .env
    ]


def near_misses(root: str) -> list[str]:
    """Commands one step away from the images and the rollback shapes: each
    must be refused even with the right image pin on its standard input."""
    compose = f"{root}/{COMPOSE_FILE}"
    base = f"docker compose -f {compose}"
    back = f"{base} {ROLLBACK_FLAGS}"
    return [
        f"{base} -f - up -d --no-deps --no-build --pull always redis",
        f"{base} -f - up -d --no-deps --no-build --pull missing redis",
        f"{base} -f - up -d --no-build --pull never redis",  # no --no-deps
        f"{base} -f - up -d --no-deps --pull never redis",  # no --no-build
        f"{base} -f - up -d --no-deps --build --pull never redis",
        f"{base} -f - up -d --no-deps --no-build --build --pull never redis",
        f"{base} -f - up -d --no-deps --no-build redis",  # may pull
        f"{base} -f - up -d --no-deps --no-build --pull=never redis",
        f"{base} -f - up -d --no-build --no-deps --pull never redis",  # reordered
        f"{base} -f - up --no-deps -d --no-build --pull never redis",
        f"{base} -f - up --no-deps --no-build --pull never redis",  # no -d
        f"{base} -f - up -d --no-deps --no-build --pull never --force-recreate redis",
        f"{back} redis --build",
        f"{base} -f - -f - up -d --no-deps --no-build --pull never redis",  # -f - twice
        f"docker compose -f - -f {compose} up -d --no-deps --no-build --pull never redis",
        f"{base} up -d --no-deps --no-build --pull never -f - redis",
        f"{base} up -d -f - --no-deps --no-build --pull never redis",
        "docker compose -f - up -d --no-deps --no-build --pull never redis",  # stdin the only file
        f"{base} -f /dev/stdin up -d --no-deps --no-build --pull never redis",
        f"{base} -f {compose} up -d --no-deps --no-build --pull never redis",
        f"{base} -f /etc/other.yaml up -d --no-deps --no-build --pull never redis",
        f"{back}",
        f"{back} redis web",
        f"{back} -redis",
        f"{back} .redis",
        f"{back} 'redis x'",
        f"{back} redis;id",
        f"{back} $(id)",
        f"{back} redis | sh",
        f"{base} -f - up -d redis",
        f"{base} -f - run --rm redis",
        f"{base} -f - ps --format json redis",
        f"{base} -f - images --format json redis",
        f"docker compose -f {root}/../etc/compose.yaml {ROLLBACK_FLAGS} redis",
        f"docker compose -f /etc/compose.yaml {ROLLBACK_FLAGS} redis",
        f"docker compose -f {root}/compose/escape.yaml {ROLLBACK_FLAGS} redis",  # symlink out of ROOT
        f"docker compose -f {posixpath.dirname(root)}/alias.yaml {ROLLBACK_FLAGS} redis",
        f"docker compose -f {root}/compose/core/compose.txt {ROLLBACK_FLAGS} redis",
        f"docker compose -f {root}/secrets/x.yml {ROLLBACK_FLAGS} redis",
        f"docker compose -f {root}/compose/evil.yml {ROLLBACK_FLAGS} redis",  # symlink to secrets/x.yml
        f"docker compose -f {root}/private/x.yml {ROLLBACK_FLAGS} redis",  # sacred by --sacred (over ssh)
        f"{base} images redis",
        f"{base} images --format table redis",
        f"{base} images --format json",
        f"{base} images --format json redis web",
        f"{base} images --format json --quiet redis",
        f"{base} images --quiet --format json redis",
        f"{base} images --format=json redis",
        f"{base} images json --format redis",
        f"{base} image --format json redis",
        f"{base} images --format json -redis",
        f"{base} images --format json 'redis x'",
        "docker compose -f /etc/compose.yaml images --format json redis",
        f"docker compose -f {root}/compose/escape.yaml images --format json redis",
        f"docker compose -f {root}/secrets/x.yml images --format json redis",
        f"docker compose -f {root}/compose/env.yml images --format json redis",  # symlink to .env
        f"docker compose -f {root}/private/x.yml images --format json redis",
        "docker compose images --format json redis",
        "docker images --format json",
        f"docker image inspect {IMAGE}",
    ]


def bad_pins() -> dict[str, bytes]:
    """Standard inputs refused for the rollback of `redis` to IMAGE."""
    good = image_pin("redis", IMAGE)
    other = "sha256:" + "cd" * 32

    def compact(value: object) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def pin_of(image: object) -> bytes:
        return compact({"services": {"redis": {"image": image}}})

    over = "s" * (PIN_MAX_BYTES - len(image_pin("s", IMAGE)) + 2)  # canonical, one byte too long
    return {
        "empty": b"",
        "trailing newline": good + b"\n",
        "trailing CRLF": good + b"\r\n",
        "leading space": b" " + good,
        "json.dumps spacing": json.dumps({"services": {"redis": {"image": IMAGE}}}).encode(),
        "indented": json.dumps({"services": {"redis": {"image": IMAGE}}}, indent=2).encode(),
        "duplicate services key": good[:-1] + b',"services":{"redis":{"image":"' + IMAGE.encode() + b'"}}}',
        "duplicate image key": b'{"services":{"redis":{"image":"redis:7","image":"' + IMAGE.encode() + b'"}}}',
        "duplicate service": b'{"services":{"redis":{"image":"' + other.encode()
        + b'"},"redis":{"image":"' + IMAGE.encode() + b'"}}}',
        "another key in the service": compact({"services": {"redis": {"image": IMAGE, "command": "sh"}}}),
        "privileged": compact({"services": {"redis": {"image": IMAGE, "privileged": True}}}),
        "another top-level key": compact({"services": {"redis": {"image": IMAGE}}, "volumes": {"x": {}}}),
        "a second service": compact({"services": {"redis": {"image": IMAGE}, "web": {"image": IMAGE}}}),
        "another service's name": image_pin("web", IMAGE),
        "the service's name in another case": image_pin("Redis", IMAGE),
        "a tag": pin_of("redis:7"),
        "a name and digest": pin_of("redis@" + IMAGE),
        "uppercase id": pin_of(IMAGE.upper()),
        "uppercase hex": pin_of("sha256:" + "AB" * 32),
        "short id": pin_of(IMAGE[:-1]),
        "long id": pin_of(IMAGE + "a"),
        "docker's short id": pin_of(IMAGE[:19]),
        "sha512": pin_of("sha512:" + "ab" * 64),
        "id with a newline": pin_of(IMAGE + "\n"),
        "image not a string": pin_of([IMAGE]),
        "image null": pin_of(None),
        "escaped character": good.replace(b"sha256:a", b"sha256:\\u0061"),
        "escaped key": good.replace(b'"image"', b'"imag\\u0065"'),
        "utf-8 BOM": b"\xef\xbb\xbf" + good,
        "utf-16": good.decode().encode("utf-16"),
        "yaml": b"services:\n  redis:\n    image: " + IMAGE.encode() + b"\n",
        "not text": b"\x00\xff\xfe",
        "a NUL after the pin": good + b"\x00",
        "a list": b"[]",
        "null": b"null",
        "services a list": compact({"services": [{"redis": {"image": IMAGE}}]}),
        "deep nesting": b"[" * 2000 + b"]" * 2000,  # within the bound, past json's recursion limit
        "deep nesting inside": b'{"services":{"redis":' + b"[" * 4000,
        "over the bound": image_pin("s", IMAGE).replace(b'"s"', b'"' + over.encode() + b'"'),
        "far over the bound": good + b" " * (1 << 20),
    }


def sacred_links(root: str) -> dict[Path, Path]:
    """Symlinks inside ROOT, to files inside ROOT, but sacred ones."""
    return {
        Path(root, "compose", "evil.yml"): Path(root, "secrets", "x.yml"),
        Path(root, "compose", "env.yml"): Path(root, ".env"),
    }


def make_root(base: Path) -> tuple[str, Path]:
    """A remote root with the compose file, and a stand-in state dir."""
    root = base / "opt-platform"
    (root / COMPOSE_FILE).parent.mkdir(parents=True)
    (root / COMPOSE_FILE).write_text("services: {}\n")
    outside = base / "outside.yaml"
    outside.write_text("services: {}\n")
    (root / "compose" / "escape.yaml").symlink_to(outside)
    (base / "alias.yaml").symlink_to(root / COMPOSE_FILE)
    for link, target in sacred_links(str(root)).items():
        target.parent.mkdir(exist_ok=True)
        target.write_text("services: {}\n")
        link.symlink_to(target)
    state = base / "state"
    (state / "behaviour").mkdir(parents=True)
    (state / "calls.jsonl").touch()
    (state / "head_sha").write_text("a" * 40 + "\n")
    return str(root), state


def gate_env(command: str | None, state: Path) -> dict[str, str]:
    env = {"STAND_IN_DIR": str(state), "PATH": SYSTEM_PATH}
    if command is not None:
        env["SSH_ORIGINAL_COMMAND"] = command
    return env


def gate_argv(root: str, *options: str, as_root: bool = False) -> list[str]:
    """The gate's command line, with `options` before ROOT; unless `as_root`,
    as a non-root user."""
    run = [str(GATE)] if as_root else ["-c", AS_NON_ROOT, str(GATE)]
    return [sys.executable, *run, "--path", f"{STAND_IN_BIN}:{SYSTEM_PATH}", *options, root]


def run_gate(
    root: str, state: Path, command: str | None, *options: str, as_root: bool = False, stdin: bytes | None = None
) -> subprocess.CompletedProcess:
    """Run the gate; with `stdin`, those bytes and EOF are its standard input."""
    argv = gate_argv(root, *options, as_root=as_root)
    done = subprocess.run(argv, env=gate_env(command, state), input=stdin, capture_output=True, timeout=10)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def recorded(state: Path) -> list[list[str]]:
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


def received_stdin(state: Path | str) -> list[tuple[list[str], bytes]]:
    """What each rollback the stand-in docker ran read on its standard input:
    (argv, bytes), in order."""
    path = Path(state, "stdin.jsonl")
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [(e["argv"], e["stdin"].encode("latin-1")) for e in entries]


def forget_stdin(state: Path | str) -> None:
    """Drop the stand-in's stdin records: a shared test sshd's reset() keeps them."""
    Path(state, "stdin.jsonl").unlink(missing_ok=True)


# ---- the gate on its own ----------------------------------------------------


@pytest.fixture
def local_root(tmp_path):
    return make_root(tmp_path)


@pytest.mark.parametrize(
    "build",
    [
        lambda r: compose_up(f"{r}/{COMPOSE_FILE}", "redis"),
        lambda r: compose_ps(f"{r}/{COMPOSE_FILE}", "a_b.c-1"),
        lambda r: compose_ps_running(f"{r}/{COMPOSE_FILE}", "redis"),  # what workers before --all send
        lambda r: compose_images(f"{r}/{COMPOSE_FILE}", "redis"),
        lambda r: compose_images(f"{r}/{COMPOSE_FILE}", "a_b.c-1"),
        git_head,
    ],
)
def test_allowed_commands_reach_the_program_unchanged(local_root, build):
    root, state = local_root
    command = build(root)
    result = run_gate(root, state, command.render())
    assert result.returncode == 0, result.stderr
    assert recorded(state) == [list(command.argv)]


def test_images_prints_the_stand_ins_image_id(local_root):
    root, state = local_root
    (state / "behaviour" / "redis").write_text(f"image={IMAGE}\n")
    result = run_gate(root, state, compose_images(f"{root}/{COMPOSE_FILE}", "redis").render())
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert (row["ID"], row["ContainerName"]) == (IMAGE, "core-redis-1")


def define(root: str, service: str) -> None:
    """The compose file defines `service` (the gate refuses a pin of any other)."""
    (Path(root) / COMPOSE_FILE).write_text(f"services:\n  {service}:\n    image: x\n")


@pytest.mark.parametrize("service", ["redis", "a_b.c-1", "0"])
def test_rollback_passes_exactly_the_pin_to_the_program(local_root, service):
    root, state = local_root
    define(root, service)
    command = compose_rollback(f"{root}/{COMPOSE_FILE}", service, IMAGE)
    result = run_gate(root, state, command.render(), stdin=command.stdin)
    assert result.returncode == 0, result.stderr
    assert recorded(state) == [list(command.argv)]
    assert received_stdin(state) == [(list(command.argv), command.stdin)]


def test_a_pin_of_exactly_the_bound_is_accepted(local_root):
    root, state = local_root
    service = "s" * (PIN_MAX_BYTES - len(image_pin("s", IMAGE)) + 1)
    define(root, service)
    command = compose_rollback(f"{root}/{COMPOSE_FILE}", service, IMAGE)
    assert command.stdin is not None and len(command.stdin) == PIN_MAX_BYTES
    result = run_gate(root, state, command.render(), stdin=command.stdin)
    assert result.returncode == 0, result.stderr
    assert received_stdin(state) == [(list(command.argv), command.stdin)]


def test_a_pin_one_byte_over_the_bound_is_refused(local_root):
    root, state = local_root
    service = "s" * (PIN_MAX_BYTES - len(image_pin("s", IMAGE)) + 2)
    argv = compose_rollback(f"{root}/{COMPOSE_FILE}", "s", IMAGE).argv[:-1] + (service,)
    pin = image_pin("s", IMAGE).replace(b'"s"', b'"' + service.encode() + b'"')
    assert len(pin) == PIN_MAX_BYTES + 1
    result = run_gate(root, state, RemoteCommand("compose_rollback", argv).render(), stdin=pin)
    refusal = f"platform-gate: image pin longer than {PIN_MAX_BYTES} bytes\n"
    assert (result.returncode, result.stderr) == (REFUSED, refusal)
    assert recorded(state) == []


def test_rollback_exit_status_is_passed_on(local_root):
    root, state = local_root
    (state / "behaviour" / "redis").write_text("rollback=fail\n")
    command = compose_rollback(f"{root}/{COMPOSE_FILE}", "redis", IMAGE)
    result = run_gate(root, state, command.render(), stdin=command.stdin)
    assert result.returncode == 1
    assert "stand-in failure" in result.stderr
    assert received_stdin(state) == [(list(command.argv), command.stdin)]


def test_near_misses_of_the_new_shapes_are_refused_and_nothing_runs(local_root):
    root, state = local_root
    Path(root, "private").mkdir()
    Path(root, "private", "x.yml").write_text("services: {}\n")
    pin = image_pin("redis", IMAGE)
    outcomes = {cmd: run_gate(root, state, cmd, "--sacred", "private/", stdin=pin) for cmd in near_misses(root)}
    wrong = {cmd: (r.returncode, r.stderr) for cmd, r in outcomes.items() if r.returncode != REFUSED}
    assert wrong == {}
    assert all(r.stderr.startswith("platform-gate: ") for r in outcomes.values())
    assert recorded(state) == []
    assert received_stdin(state) == []


@pytest.mark.parametrize("case", list(bad_pins()))
def test_a_rollback_with_anything_but_its_exact_pin_is_refused(local_root, case):
    root, state = local_root
    command = compose_rollback(f"{root}/{COMPOSE_FILE}", "redis", IMAGE)
    result = run_gate(root, state, command.render(), stdin=bad_pins()[case])
    assert result.returncode == REFUSED, result.stderr
    if "bound" in case:
        assert result.stderr == f"platform-gate: image pin longer than {PIN_MAX_BYTES} bytes\n"
    else:
        assert result.stderr == "platform-gate: standard input is not the image pin of service redis\n"
    assert recorded(state) == []
    assert received_stdin(state) == []


def test_the_pin_must_name_the_commands_own_service(local_root):
    # The pin names the service of the command, not any service of the file.
    root, state = local_root
    command = compose_rollback(f"{root}/{COMPOSE_FILE}", "web", IMAGE)
    result = run_gate(root, state, command.render(), stdin=image_pin("redis", IMAGE))
    assert result.returncode == REFUSED
    assert recorded(state) == []


def test_quoted_parts_are_accepted(local_root):
    root, state = local_root
    result = run_gate(root, state, f"'docker' compose -f '{root}/{COMPOSE_FILE}' up -d \"redis\"")
    assert result.returncode == 0, result.stderr
    assert recorded(state) == [["docker", "compose", "-f", f"{root}/{COMPOSE_FILE}", "up", "-d", "redis"]]


def test_exit_status_is_passed_on(local_root):
    root, state = local_root
    (state / "behaviour" / "redis").write_text("fail")
    result = run_gate(root, state, compose_up(f"{root}/{COMPOSE_FILE}", "redis").render())
    assert result.returncode == 1
    assert "stand-in failure" in result.stderr


def test_injections_are_refused_and_nothing_runs(local_root):
    root, state = local_root
    outcomes = {cmd: run_gate(root, state, cmd) for cmd in injections(root)}
    outcomes["<unset>"] = run_gate(root, state, None)
    wrong = {cmd: (r.returncode, r.stderr) for cmd, r in outcomes.items() if r.returncode != REFUSED}
    assert wrong == {}
    assert all(r.stderr.startswith("platform-gate: ") for r in outcomes.values())
    assert recorded(state) == []
    assert not Path(root, "owned").exists()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["relative/root"],
        ["/"],
        ["/opt/../etc"],
        ["/opt/platform", "extra"],
        ["--sacred", "/opt/platform"],
        ["--bogus", "x", "/opt/platform"],
    ],
)
def test_bad_gate_arguments_refuse_everything(local_root, args):
    root, state = local_root
    env = gate_env(git_head(root).render(), state)
    argv = [sys.executable, "-c", AS_NON_ROOT, str(GATE), *args]
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert result.returncode == REFUSED
    assert recorded(state) == []


def load_gate():
    """host/platform_gate.py, the gate's code (host/ is no package)."""
    loader = importlib.machinery.SourceFileLoader("platform_gate", str(GATE_CODE))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


GATE_MODULE = load_gate()


def shlex_or_error(split, command: str) -> list[str] | type[ValueError]:
    try:
        return split(command)
    except ValueError:
        return ValueError


# Quotes, escapes, blanks and shell syntax, densely: the cases where a split can go wrong.
@settings(max_examples=1000)
@given(st.text(alphabet=" \t\n'\"\\ab$;|-", max_size=40))
def test_the_gates_split_is_shlex_split(command):
    assert shlex_or_error(GATE_MODULE.split_command, command) == shlex_or_error(shlex.split, command)


def gate_by_its_shebang(*args: str) -> list[str]:
    """argv that runs the gate as a host does: the interpreter and flags of its #! line."""
    interpreter = GATE.read_text().splitlines()[0].removeprefix("#!").split()
    return [*interpreter, *args, str(GATE)]


needs_system_python = pytest.mark.skipif(
    not os.access("/usr/bin/python3", os.X_OK), reason="the gate's #! names Debian's /usr/bin/python3"
)


@needs_system_python
def test_the_gate_starts_without_heavy_imports(local_root):
    # Every command starts a gate: importing re, enum (behind re, signal and
    # subprocess), shlex, shutil and site-packages doubled its start-up time.
    root, state = local_root
    argv = [*gate_by_its_shebang("-X", "importtime"), root]  # refused as root, after the imports
    result = subprocess.run(argv, env=gate_env(git_head(root).render(), state), capture_output=True, text=True)
    assert (result.returncode, result.stderr.splitlines()[-1]) == (REFUSED, ROOT_REFUSAL.strip())
    lines = result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    assert "select" in imported  # the output is what it seems
    assert imported & {"re", "enum", "shlex", "signal", "subprocess", "shutil", "json", "site"} == set()


@needs_system_python
def test_the_installed_gate_runs_from_the_bytecode_compiled_at_install(local_root, tmp_path):
    # A script is compiled on every run (about 5 ms of each gated command); the
    # gate's module, installed as host/README.md says, is not.
    root, state = local_root
    gate = install_gate(tmp_path / "lib" / "platform-gate", tmp_path / "platform-gate")
    interpreter = GATE.read_text().splitlines()[0].removeprefix("#!").split()
    argv = [*interpreter, "-v", str(gate), root]  # refused as root, after the imports
    result = subprocess.run(argv, env=gate_env(git_head(root).render(), state), capture_output=True, text=True)
    assert result.returncode == REFUSED and ROOT_REFUSAL in result.stderr  # -v goes on after it, at exit
    loaded = [line for line in result.stderr.splitlines() if line.startswith("# code object from")]
    (line,) = [line for line in loaded if "platform_gate" in line]
    cache = f"# code object from '{tmp_path}/lib/platform-gate/__pycache__/platform_gate."
    assert line.startswith(cache) and line.endswith(".pyc'"), line  # the tag is the host Python's (cpython-311)


@needs_system_python
def test_the_gate_program_installed_without_its_code_refuses_everything(local_root, tmp_path):
    # As an operator following the one-file install of before would leave it.
    root, state = local_root
    lone = tmp_path / "platform-gate"
    shutil.copyfile(GATE, lone)
    lone.chmod(0o755)
    result = subprocess.run([str(lone), root], env=gate_env(git_head(root).render(), state), capture_output=True,
                            text=True)
    assert (result.returncode, result.stderr) == (
        REFUSED, f"platform-gate: no platform_gate.py in {tmp_path}: install both files (host/README.md)\n"
    )
    assert recorded(state) == []


@needs_system_python
def test_the_gate_ignores_python_variables(local_root):
    # -I: PYTHON* variables in the session's environment (PYTHONPATH,
    # PYTHONINSPECT, ...) do not reach the gate's interpreter. This one shows.
    root, state = local_root
    env = gate_env(git_head(root).render(), state) | {"PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run([*gate_by_its_shebang(), root], env=env, capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (REFUSED, ROOT_REFUSAL)


def test_uid_0_is_refused_before_anything_runs(local_root, monkeypatch, capsys):
    root, state = local_root
    gate = load_gate()
    monkeypatch.setattr(gate.os, "geteuid", lambda: 0)
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", git_head(root).render())
    monkeypatch.setenv("STAND_IN_DIR", str(state))
    assert gate.main(["--path", f"{STAND_IN_BIN}:{SYSTEM_PATH}", root]) == REFUSED
    assert capsys.readouterr().err == ROOT_REFUSAL
    assert recorded(state) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs to run as root")
def test_gate_run_as_root_refuses_everything(local_root):
    root, state = local_root
    result = run_gate(root, state, compose_up(f"{root}/{COMPOSE_FILE}", "redis").render(), as_root=True)
    assert (result.returncode, result.stderr) == (REFUSED, ROOT_REFUSAL)
    assert recorded(state) == []


def assert_refused_as_sacred(result: subprocess.CompletedProcess, path: str, sacred: str) -> None:
    expected = f"platform-gate: compose file {path} is under sacred path {sacred}\n"
    assert (result.returncode, result.stderr) == (REFUSED, expected)


@pytest.mark.parametrize(
    "compose_file, sacred",
    [
        ("secrets/x.yml", "secrets/"),
        ("compose/evil.yml", "secrets/"),  # a symlink to secrets/x.yml
        ("compose/env.yml", ".env"),  # a symlink to the .env file
        (".git/compose.yaml", ".git/"),
    ],
)
def test_compose_files_under_default_sacred_paths_are_refused(local_root, compose_file, sacred):
    root, state = local_root
    path = f"{root}/{compose_file}"
    if not Path(path).exists():
        Path(path).parent.mkdir(exist_ok=True)
        Path(path).write_text("services: {}\n")
    assert_refused_as_sacred(run_gate(root, state, compose_up(path, "redis").render()), path, sacred)
    assert recorded(state) == []


def test_sacred_options_add_paths(local_root):
    root, state = local_root
    elsewhere = f"{root}/elsewhere"
    for rel in ("private/a.yml", "elsewhere/b.yml", "compose/ok.yml"):
        Path(root, rel).parent.mkdir(exist_ok=True)
        Path(root, rel).write_text("services: {}\n")
    options = ["--sacred", "private/", "--sacred", elsewhere]
    refused = {
        f"{root}/private/a.yml": "private/",  # relative to ROOT
        f"{root}/elsewhere/b.yml": elsewhere,  # absolute
    }
    for path, sacred in refused.items():
        result = run_gate(root, state, compose_up(path, "redis").render(), *options)
        assert_refused_as_sacred(result, path, sacred)
    assert recorded(state) == []
    allowed = compose_up(f"{root}/compose/ok.yml", "redis")
    result = run_gate(root, state, allowed.render(), *options)
    assert result.returncode == 0, result.stderr
    assert recorded(state) == [list(allowed.argv)]


def test_defaults_hold_when_sacred_options_are_given(local_root):
    root, state = local_root
    path = f"{root}/secrets/x.yml"
    result = run_gate(root, state, compose_up(path, "redis").render(), "--sacred", "private/")
    assert_refused_as_sacred(result, path, "secrets/")
    assert recorded(state) == []


def test_sacred_paths_are_resolved_like_the_compose_file(tmp_path):
    # ROOT itself a symlink: both sides must be compared as real paths, or
    # ROOT/secrets/x.yml (really /real/secrets/x.yml) slips past "secrets/".
    root, state = make_root(tmp_path)
    linked_root = tmp_path / "linked-root"
    linked_root.symlink_to(root)
    path = f"{linked_root}/secrets/x.yml"
    result = run_gate(str(linked_root), state, compose_up(path, "redis").render())
    assert_refused_as_sacred(result, path, "secrets/")
    assert recorded(state) == []


@pytest.mark.parametrize("shape", ["up", "rollback"])
def test_command_is_killed_when_the_client_goes_away(local_root, shape):
    root, state = local_root
    (state / "behaviour" / "redis").write_text("hang rollback=hang")
    path = f"{root}/{COMPOSE_FILE}"
    command = compose_up(path, "redis") if shape == "up" else compose_rollback(path, "redis", IMAGE)
    gate = subprocess.Popen(
        gate_argv(root),
        env=gate_env(command.render(), state),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        if command.stdin is not None:
            gate.stdin.write(command.stdin)
        gate.stdin.close()
        assert wait_until(lambda: (state / "hang.pid").exists())
        pid = int((state / "hang.pid").read_text())
        time.sleep(0.2)
        assert process_running(pid)  # the gate waits while its client is there
        gate.stdout.close()  # what sshd does when the channel closes
        gate.stderr.close()
        assert gate.wait(timeout=5) == 128 + 9
        assert wait_until(lambda: not process_running(pid)), f"pid {pid} survived its gate"
    finally:
        gate.kill()
        gate.wait()


# ---- the gate as the forced command of a real sshd --------------------------


@pytest.fixture(scope="module")
def gated_server():
    yield from serve("127.0.0.1", gate=True, sacred=("private/",))


@pytest.fixture
def gated_host(gated_server):
    gated_server.reset()
    forget_stdin(gated_server.state_dir)
    return gated_server


@pytest.fixture
async def gated_conn(gated_host):
    conn = await asyncssh.connect(
        gated_host.address,
        gated_host.port,
        username=gated_host.user,
        known_hosts=asyncssh.import_known_hosts(gated_host.host_key_line),
        client_keys=[gated_host.client_key_path],
        agent_path=None,
        config=[],
    )
    yield conn
    conn.close()
    await conn.wait_closed()


async def test_transport_commands_pass_the_gate(gated_host):
    gated_host.set_head_sha("b" * 40)
    transport = SshTransport()
    config = gated_host.host_config()
    gated_host.set_behaviour("redis", f"image={IMAGE}")
    rollback = compose_rollback(gated_host.compose_path, "redis", "sha256:" + "cd" * 32)
    commands = [
        compose_up(gated_host.compose_path, "redis"),
        compose_ps(gated_host.compose_path, "redis"),
        git_head(gated_host.remote_root),
        compose_images(gated_host.compose_path, "redis"),
        rollback,
    ]
    try:
        outs = [await transport.run(config, c, timeout_s=10) for c in commands]
    finally:
        await transport.close()
    assert [o.returncode for o in outs] == [0, 0, 0, 0, 0], [o.stderr for o in outs]
    assert json.loads(outs[1].stdout)["State"] == "running"
    assert outs[2].stdout == "b" * 40 + "\n"
    assert [row["ID"] for row in json.loads(outs[3].stdout)] == [IMAGE]
    assert gated_host.calls() == [list(c.argv) for c in commands]
    assert received_stdin(gated_host.state_dir) == [(list(rollback.argv), rollback.stdin)]


def link_traps(host) -> None:
    """The symlinks the refusal lists expect inside the gated host's root."""
    root = host.remote_root
    links = {
        Path(root, "compose", "escape.yaml"): Path("/etc/hostname"),
        Path(host.base_dir, "alias.yaml"): Path(host.compose_path),
        **sacred_links(root),
    }
    for link, target in links.items():
        if not link.is_symlink():
            link.symlink_to(target)


async def run_with_input(conn, command: str, data: str):
    try:
        return await conn.run(command, input=data)
    except BrokenPipeError:  # refused (and the channel closed) before the input was sent: ask again without it
        return await conn.run(command)


async def test_near_misses_over_ssh_exit_126_and_nothing_runs(gated_host, gated_conn):
    link_traps(gated_host)
    pin = image_pin("redis", IMAGE).decode()
    results = {cmd: await run_with_input(gated_conn, cmd, pin) for cmd in near_misses(gated_host.remote_root)}
    wrong = {c: (r.exit_status, r.stderr) for c, r in results.items() if r.exit_status != REFUSED}
    assert wrong == {}
    assert gated_host.calls() == []
    assert received_stdin(gated_host.state_dir) == []


@pytest.mark.parametrize(
    "case", ["trailing newline", "another service's name", "a tag", "duplicate services key", "far over the bound"]
)
async def test_bad_pins_over_ssh_exit_126_and_nothing_runs(gated_host, case):
    command = compose_rollback(gated_host.compose_path, "redis", IMAGE)
    bad = RemoteCommand(command.kind, command.argv, stdin=bad_pins()[case])
    transport = SshTransport()
    try:
        out = await transport.run(gated_host.host_config(), bad, timeout_s=10)
    finally:
        await transport.close()
    assert out.returncode == REFUSED, out.stderr
    assert out.stderr.startswith("platform-gate: ")
    assert gated_host.calls() == []


async def test_a_refused_command_with_stdin_reports_126(gated_host):
    # The gate refuses before reading: the transport's write may then find the
    # channel closing, and must still report the exit status, not a lost connection.
    near = near_misses(gated_host.remote_root)[0]
    command = RemoteCommand("test_only", tuple(near.split()), stdin=image_pin("redis", IMAGE) * 50)
    transport = SshTransport()
    try:
        outs = [await transport.run(gated_host.host_config(), command, timeout_s=10) for _ in range(20)]
    finally:
        await transport.close()
    assert {o.returncode for o in outs} == {REFUSED}
    assert gated_host.calls() == []


async def test_injections_over_ssh_exit_126_and_nothing_runs(gated_host, gated_conn):
    root = gated_host.remote_root
    link_traps(gated_host)
    results = {}
    for command in [*injections(root), f"docker compose -f {root}/private/x.yml up -d redis"]:
        results[command] = await gated_conn.run(command)
    wrong = {c: (r.exit_status, r.stderr) for c, r in results.items() if r.exit_status != REFUSED}
    assert wrong == {}
    assert gated_host.calls() == []
    assert not Path(gated_host.remote_root, "owned").exists()


async def test_no_shell_and_no_pty(gated_host, gated_conn):
    shell = await gated_conn.run(None)  # a login shell request reaches the gate without a command
    assert shell.exit_status == REFUSED
    with pytest.raises(asyncssh.ChannelOpenError):
        await gated_conn.create_process(git_head(gated_host.remote_root).render(), term_type="xterm")
    assert gated_host.calls() == []


async def test_port_forwarding_is_refused(gated_host, gated_conn):
    with pytest.raises(asyncssh.ChannelOpenError):
        await gated_conn.open_connection(gated_host.address, gated_host.port)


@pytest.mark.parametrize("shape", ["up", "rollback"])
async def test_timeout_kills_the_command_behind_the_gate(gated_host, shape):
    # OpenSSH refuses signals to forced-command sessions: only the gate's
    # watch on the closed channel can end this process.
    gated_host.set_behaviour("redis", "hang rollback=hang")
    path = gated_host.compose_path
    command = compose_up(path, "redis") if shape == "up" else compose_rollback(path, "redis", IMAGE)
    transport = SshTransport()
    try:
        out = await transport.run(gated_host.host_config(), command, timeout_s=1)
    finally:
        await transport.close()
    assert out.timed_out
    pid = gated_host.hang_pid()
    assert pid is not None
    assert await eventually(lambda: not process_running(pid)), f"pid {pid} survived the timeout"
    assert "refusing to send signal" in Path(gated_host.log_path).read_text()


@pytest.fixture
def root_alias_host():
    """A gated sshd whose deploy user is uid 0 under another name."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with accounts_lock():
        try:
            pwd.getpwnam(ROOT_ALIAS)  # left over from an interrupted run
        except KeyError:
            subprocess.run(
                ["useradd", "--non-unique", "--uid", "0", "--gid", "0", "--no-create-home",
                 "--home-dir", "/", "--shell", "/bin/sh", ROOT_ALIAS],
                check=True,
                capture_output=True,  # it warns that uid 0 is outside UID_MIN..UID_MAX
            )
    assert pwd.getpwnam(ROOT_ALIAS).pw_uid == 0
    try:
        yield from serve("127.0.0.1", user=ROOT_ALIAS, gate=True)
    finally:
        with accounts_lock():
            # --force: userdel sees uid 0 in use by every root process.
            subprocess.run(["userdel", "--force", ROOT_ALIAS], check=True, capture_output=True)


async def test_a_uid_0_deploy_user_gets_nothing(root_alias_host):
    host = root_alias_host
    async with asyncssh.connect(
        host.address,
        host.port,
        username=host.user,
        known_hosts=asyncssh.import_known_hosts(host.host_key_line),
        client_keys=[host.client_key_path],
        agent_path=None,
        config=[],
    ) as conn:
        result = await conn.run(compose_up(host.compose_path, "redis").render())
    assert (result.exit_status, result.stderr) == (REFUSED, ROOT_REFUSAL)
    assert host.calls() == []
