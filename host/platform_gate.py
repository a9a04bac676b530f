"""Forced command for the deploy key: run only the commands platformctl sends.

host/platform-gate, the program authorized_keys names, runs main() from here
(installed beside it, see host/README.md). authorized_keys on a host:

    command="/usr/local/bin/platform-gate --sacred backups/ /opt/platform",restrict ssh-ed25519 AAAA...

Usage: platform-gate [--path DIR[:DIR...]] [--sacred PATH]... [--state DIR] [--lease-ttl S] [--read-only]
                     [--allow-sync] ROOT

Run as root (effective uid 0, whatever the user is called), the gate refuses
everything: the deploy user must not be root.

sshd puts the client's command in SSH_ORIGINAL_COMMAND. It is split into
words as shlex.split does (shell quoting, no expansion) and allowed only if
it is exactly one of

    docker compose -f ROOT/<rel>.yml|.yaml up -d SERVICE
    docker compose -f ROOT/<rel>.yml|.yaml ps [--all] --format json SERVICE
    docker compose -f ROOT/<rel>.yml|.yaml images --format json SERVICE
    docker compose -f ROOT/<rel>.yml|.yaml -f - up -d --no-deps --no-build --pull never SERVICE
    git -C ROOT rev-parse HEAD
    platform-agent apply RUN TIMEOUT ROOT/<rel>.yml|.yaml SERVICE SHA|- --lease
    platform-agent apply RUN TIMEOUT ROOT/<rel>.yml|.yaml SERVICE SHA --lease --sync
    platform-agent apply RUN TIMEOUT ROOT/<rel>.yml|.yaml SERVICE SHA|- --lease --action recreate|restart
    platform-agent apply RUN TIMEOUT ROOT/<rel>.yml|.yaml SERVICE SHA --lease --sync --action recreate|restart
    platform-agent health RUN ROOT/<rel>.yml|.yaml SERVICE
    platform-agent rollback RUN TIMEOUT ROOT/<rel>.yml|.yaml SERVICE
    platform-agent release RUN
    platform-agent check [--prerequisites]
    platform-agent logs RUN

The last seven are the host agent's verbs (platform_agent.py, installed beside
this file): RUN a lowercase UUID, TIMEOUT 1..3600 seconds, SHA 40 lowercase
hex or `-`. Its records, leases and the raw output it keeps live in --state
DIR (default ~/.platform-agent); a lease expires --lease-ttl seconds after
its run last spoke (default 600, at most 3600). With --read-only (the
operators' key) only `ps`, `images`, `git rev-parse HEAD` and the agent's
`check` and `logs` are allowed. `apply ... --sync` (fetch, then check out SHA
first) runs only where the host's admin wrote --allow-sync; elsewhere the
agent answers that the host does not allow it, and nothing runs. `--action`
(v5) names the plan's action, which the agent maps to compose's argv from a
fixed table (no flag: `up -d`).

The compose file must also stay inside ROOT, and not be or lie under a sacred
path, once symlinks are resolved. Sacred paths are the defaults below plus
each `--sacred PATH` (relative to ROOT, or absolute).

The last compose shape (an image rollback; today an operator's) reads a compose override from
standard input. The gate reads it first, up to EOF and at most PIN_MAX_BYTES,
and allows it only if it is, byte for byte, the compact JSON pin of that same
SERVICE to one image ID:

    {"services":{"SERVICE":{"image":"sha256:<64 lowercase hex>"}}}

(no whitespace, no newline, no other key). Compose then gets exactly those
bytes on its standard input, so the override can change the service's image
and nothing else. It runs under the project's lock, and is refused for a
service the compose file does not define or while a run holds the project's
lease. The other shapes get the session's standard input as it is.

Everything else is refused with exit 126 and nothing runs. The program is
started by absolute path, found on a fixed PATH (default below; `--path`
in authorized_keys overrides it), with no shell in between.

The gate starts for every command, so it imports nothing it can do without:
`-I` keeps PYTHON* variables and user site-packages out, `-S` skips
site-packages (the gate is stdlib only), and re, shlex, subprocess, shutil
and signal are replaced by a few lines each (importing them tripled the
gate's start-up time). Its code is this module, not the script itself, so
that Python runs it from the bytecode compiled at install time: a script is
compiled on every run, about 5 ms of each gated command.

The gate stays as the parent of the command instead of exec'ing it: OpenSSH
refuses "signal" requests for forced-command sessions, and closing a channel
only closes the command's pipes. So the gate watches its stdout and stderr;
when the client closes the channel (e.g. at its timeout) the reading end goes
away and the gate kills the command's whole process group.
"""

import os
import posixpath
import select
import sys
from _signal import SIGKILL, SIGPIPE, SIGXFSZ  # signal's C core: `signal` itself imports enum

REFUSED = 126
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
SERVICE_CHARS = ALNUM | frozenset("_.-")  # a service: [a-zA-Z0-9][a-zA-Z0-9_.-]*
HEX = frozenset("0123456789abcdef")
PIN_MAX_BYTES = 4096  # the same bound as PIN_MAX_BYTES in platformctl/commands.py
# The same list as DEFAULT_SACRED_PATHS in platformctl/config.py: the gate is
# copied to hosts without platformctl, so it keeps its own copy.
DEFAULT_SACRED = (".env", ".git/", "secrets/", "/etc/", "/root/")
USAGE = (
    "usage: platform-gate [--path DIR[:DIR...]] [--sacred PATH]... [--state DIR] [--lease-ttl S] [--read-only] "
    "[--allow-sync] ROOT"
)
# The shapes the operator's read-only key may run: nothing that changes a host.
READ_ONLY = frozenset({"ps", "images", "git_head", "agent_check", "agent_logs"})
LEASE_TTL_S, MAX_LEASE_TTL_S = 600, 3600  # platform_agent.py's
MAX_UP_TIMEOUT_S = 3600  # MAX_UP_TIMEOUT_S in platformctl/commands.py
# The tails `apply` may end with: `--action` (v5) only with a value from platform_agent.ACTIONS.
APPLY_TAILS = tuple(
    ["--lease", *sync, *action]
    for sync in ([], ["--sync"])
    for action in ([], ["--action", "recreate"], ["--action", "restart"])
)
# What may stand between `docker compose -f FILE` and SERVICE, by shape.
COMPOSE_SHAPES = {
    ("up", "-d"): "up",
    ("ps", "--all", "--format", "json"): "ps",
    ("ps", "--format", "json"): "ps",  # what workers before --all send
    ("images", "--format", "json"): "images",
    ("-f", "-", "up", "-d", "--no-deps", "--no-build", "--pull", "never"): "rollback",
}


class Refused(Exception):
    pass


def parse_args(argv):
    """(root, bin_path, sacred, state, ttl, read_only, allow_sync) from the gate's own
    arguments, set by the host's admin."""
    bin_path, sacred, state, ttl = DEFAULT_PATH, list(DEFAULT_SACRED), None, LEASE_TTL_S
    flags = {"--read-only": False, "--allow-sync": False}
    options = ("--path", "--sacred", "--state", "--lease-ttl")
    while argv and argv[0] in flags or len(argv) >= 2 and argv[0] in options:
        if argv[0] in flags:
            flags[argv[0]], argv = True, argv[1:]
            continue
        if argv[0] == "--path":
            bin_path = argv[1]
        elif argv[0] == "--state":
            state = argv[1]
        elif argv[0] == "--lease-ttl":
            if not (argv[1].isascii() and argv[1].isdigit() and 0 < int(argv[1]) <= MAX_LEASE_TTL_S):
                raise Refused(f"platform-gate: --lease-ttl must be 1..{MAX_LEASE_TTL_S} seconds")
            ttl = int(argv[1])
        else:
            sacred.append(argv[1])
        argv = argv[2:]
    if len(argv) != 1:
        raise Refused(USAGE)
    root = argv[0]
    if not normalized_absolute(root) or root == "/":
        raise Refused("platform-gate: ROOT must be a normalized absolute path other than /")
    state = state or os.path.join(os.path.expanduser("~"), ".platform-agent")
    if not normalized_absolute(state):
        raise Refused("platform-gate: --state must be a normalized absolute path")
    return root, bin_path, sacred, state, ttl, flags["--read-only"], flags["--allow-sync"]


def has_control(text):
    return any(ch < " " or ch == "\x7f" for ch in text)


def service_ok(name):
    return name[:1] in ALNUM and set(name) <= SERVICE_CHARS


def image_id_ok(value):
    """sha256:<64 lowercase hex>"""
    return len(value) == 71 and value.startswith("sha256:") and set(value[7:]) <= HEX


def normalized_absolute(path):
    return (
        path.startswith("/")
        and not path.startswith("//")
        and posixpath.normpath(path) == path
        and not has_control(path)
    )


def compose_file_ok(path, root):
    if not (normalized_absolute(path) and path.endswith((".yml", ".yaml"))):
        return False
    if not path.startswith(root + "/"):
        return False
    # A symlink inside ROOT must not lead compose outside it.
    real_root = os.path.realpath(root)
    return os.path.realpath(path).startswith(real_root + "/")


def sacred_match(path, root, sacred):
    """The sacred entry the compose file is or lies under once symlinks are
    resolved, or None."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    for entry in sacred:
        # Resolved the same way as the file, so a link on either side cannot
        # hide the match; join keeps an absolute entry as it is.
        prefix = os.path.realpath(os.path.join(real_root, entry))
        if real == prefix or real.startswith(prefix.rstrip("/") + "/"):
            return entry
    return None


def run_id_ok(value):
    """A workflow run id: a lowercase UUID."""
    parts = value.split("-")
    return [len(p) for p in parts] == [8, 4, 4, 4, 12] and set(value) <= HEX | {"-"}


def timeout_ok(value):
    return value.isdigit() and value.isascii() and 0 < int(value) <= MAX_UP_TIMEOUT_S


def agent_shape(argv, root):
    """The agent verb argv is ("agent_apply", "agent_health", ...), or None."""
    verb, args = argv[1:2], argv[2:]
    if argv[1:] in (["check"], ["check", "--prerequisites"]):
        return "agent_check"
    if verb in (["logs"], ["release"]) and len(args) == 1 and run_id_ok(args[0]):
        return "agent_" + verb[0]
    if verb == ["health"] and len(args) == 3:
        run, compose_file, service = args
        if run_id_ok(run) and compose_file_ok(compose_file, root) and service_ok(service):
            return "agent_health"
    if verb == ["rollback"] and len(args) == 4:
        run, timeout, compose_file, service = args
        if run_id_ok(run) and timeout_ok(timeout) and compose_file_ok(compose_file, root) and service_ok(service):
            return "agent_rollback"
    # `--lease` after SHA: a gate older than the lease (v2) refuses the shape, so a worker
    # that needs it never runs compose up there without one; `--sync` (v4) the same way.
    # `--action` (v5) the same: an older gate refuses it rather than run a plain `up -d`.
    if verb == ["apply"] and args[5:] in APPLY_TAILS:
        run, timeout, compose_file, service, sha = args[:5]
        sha_ok = len(sha) == 40 and set(sha) <= HEX or sha == "-" and "--sync" not in args[5:]  # sync needs a SHA
        if run_id_ok(run) and timeout_ok(timeout) and compose_file_ok(compose_file, root) and service_ok(service):
            return "agent_apply" if sha_ok else None
    return None


def shape(argv, root):
    """The permitted shape argv is, exactly ("up", "ps", "images", "rollback",
    "git_head" or an agent verb's), or None."""
    if argv[:1] == ["platform-agent"]:
        return agent_shape(argv, root)
    if argv[:3] == ["docker", "compose", "-f"] and len(argv) > 4:
        name = COMPOSE_SHAPES.get(tuple(argv[4:-1]))
        if name and compose_file_ok(argv[3], root) and service_ok(argv[-1]):
            return name
        return None
    if argv == ["git", "-C", root, "rev-parse", "HEAD"]:
        return "git_head"
    return None


def split_command(command):
    """The words of `command` exactly as shlex.split gives them (POSIX rules,
    no expansion): blanks separate words, '...' is literal, in "..." a
    backslash escapes only " and itself, elsewhere any character."""
    words, word, quote = [], None, None  # word is None between words
    chars = iter(command)
    for ch in chars:
        if quote == "'" and ch != "'" or quote == '"' and ch not in '"\\':
            word += ch
        elif ch == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError("No escaped character")
            kept = "\\" if quote == '"' and escaped not in '"\\' else ""  # "a\b" is a\b
            word = (word or "") + kept + escaped
        elif ch == quote:
            quote = None
        elif ch in "'\"":
            quote, word = ch, word or ""  # '' is a word, if an empty one
        elif ch in " \t\r\n":
            if word is not None:
                words.append(word)
            word = None
        else:
            word = (word or "") + ch
    if quote:
        raise ValueError("No closing quotation")
    return words if word is None else words + [word]


def parse(command, root, sacred):
    if not command:
        raise Refused("platform-gate: no command (interactive sessions are not allowed)")
    if has_control(command):
        raise Refused("platform-gate: control character in command")
    try:
        argv = split_command(command)
    except ValueError as exc:
        raise Refused(f"platform-gate: cannot parse command: {exc}") from None
    name = shape(argv, root)
    if name is None:
        raise Refused(f"platform-gate: command not allowed: {command}")
    compose_file = argv[3] if argv[0] == "docker" else next((a for a in argv[2:] if a.startswith("/")), None)
    if compose_file is not None:
        entry = sacred_match(compose_file, root, sacred)
        if entry is not None:
            raise Refused(f"platform-gate: compose file {compose_file} is under sacred path {entry}")
    return argv, name


def read_stdin(limit):
    """Standard input up to EOF, or its first limit + 1 bytes if it is longer."""
    chunks, size = [], 0
    while size <= limit:
        try:
            chunk = os.read(0, limit + 1 - size)
        except OSError as exc:  # e.g. no stdin at all
            raise Refused(f"platform-gate: cannot read the image pin: {exc}") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def canonical_pin(service, image_id):
    import json  # here, not at the top: only a rollback pays for it at start-up

    return json.dumps({"services": {service: {"image": image_id}}}, separators=(",", ":")).encode("ascii")


def pin_ok(data, service):
    """True if data is exactly the canonical pin of `service` to an image ID."""
    import json

    try:
        image_id = json.loads(data.decode("ascii"))["services"][service]["image"]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return False
    if not (isinstance(image_id, str) and image_id_ok(image_id)):
        return False
    # Rebuilt from the parsed ID and the command's own SERVICE, then compared
    # as bytes: duplicate keys, other keys or services, spacing all differ.
    return data == canonical_pin(service, image_id)


def read_pin(service):
    data = read_stdin(PIN_MAX_BYTES)
    if len(data) > PIN_MAX_BYTES:
        raise Refused(f"platform-gate: image pin longer than {PIN_MAX_BYTES} bytes")
    if not pin_ok(data, service):
        raise Refused(f"platform-gate: standard input is not the image pin of service {service}")
    return data


def find_program(name, bin_path):
    """The absolute path of executable `name` in the first directory of
    bin_path that has one (shutil.which's rule, absolute entries only), or None."""
    for directory in bin_path.split(":"):
        path = os.path.join(directory, name)
        if os.path.isabs(path) and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def run_supervised(program, argv, bin_path, stdin_data=None):
    """Run the command in its own process group; kill the group if the client
    goes away before it finishes. Returns the exit status to pass on.
    With stdin_data, the command reads those bytes and EOF instead of the
    session's standard input."""
    env = dict(os.environ, PATH=bin_path)
    actions = []
    if stdin_data is not None:
        pin_r, pin_w = os.pipe()
        actions.append((os.POSIX_SPAWN_DUP2, pin_r, 0))
    # Every descriptor the gate opens is close-on-exec, so the command gets
    # only 0-2. setsigdef undoes Python's SIG_IGN of these, as subprocess does.
    pid = os.posix_spawn(
        program, [program] + argv[1:], env, file_actions=actions, setsid=True, setsigdef=(SIGPIPE, SIGXFSZ)
    )
    if stdin_data is not None:
        os.close(pin_r)
        try:
            os.write(pin_w, stdin_data)  # at most PIN_MAX_BYTES = PIPE_BUF: written whole, at once
        except BrokenPipeError:
            pass  # the command ended without reading it; its exit status is passed on
        finally:
            os.close(pin_w)
    ended = os.pidfd_open(pid)  # readable once the command has exited
    poller = select.poll()
    poller.register(ended, select.POLLIN)
    for fd in (1, 2):
        # Mask 0 still reports POLLERR/POLLHUP: sshd closed its end of the pipe.
        poller.register(fd, 0)
    gone = select.POLLERR | select.POLLHUP | select.POLLNVAL
    while True:
        events = dict(poller.poll())
        if ended in events:
            break
        if any(mask & gone for mask in events.values()):
            os.killpg(pid, SIGKILL)  # the unreaped child keeps the group alive
            break
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return code if code >= 0 else 128 - code


def client_gone():
    """True once sshd has closed our output pipes (the client closed the channel)."""
    poller = select.poll()
    for fd in (1, 2):
        poller.register(fd, 0)
    return any(mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, mask in poller.poll(0))


def main(argv):
    try:
        # By uid, not name: a uid-0 account called "deploy" is root all the same.
        if os.geteuid() == 0:
            raise Refused("platform-gate: refusing to run as root (uid 0); use a non-root deploy user")
        root, bin_path, sacred, state, ttl, read_only, allow_sync = parse_args(argv)
        command, name = parse(os.environ.get("SSH_ORIGINAL_COMMAND", ""), root, sacred)
        if read_only and name not in READ_ONLY:
            raise Refused(f"platform-gate: read-only key: {name} not allowed")
        needs = "docker" if name in ("agent_apply", "agent_health", "agent_rollback") else command[0]
        program = find_program(needs, bin_path) if needs != "platform-agent" else needs
        if not program:
            raise Refused(f"platform-gate: {needs} not found on {bin_path}")
        pin = read_pin(command[-1]) if name == "rollback" else None
        if name == "rollback":
            import platform_agent

            # Never beside an `apply` of the same project, nor inside another run's lease.
            if platform_agent.hold_project(state, bin_path, command[3], command[-1], client_gone) is None:
                return REFUSED  # the client stopped waiting: nothing ran
    except Refused as exc:
        print(exc, file=sys.stderr)
        return REFUSED
    if name.startswith("agent_"):
        return agent(name, command[2:], root, bin_path, state, ttl, allow_sync)
    return run_supervised(program, command, bin_path, pin)


def agent(name, args, root, bin_path, state, ttl, allow_sync):
    import platform_agent  # here: the other shapes do not pay for its imports

    if name == "agent_apply":
        run, timeout, compose_file, service, sha = args[:5]
        sync = "--sync" in args[5:]
        action = args[-1] if "--action" in args[5:] else "up"
        return platform_agent.apply(
            root, bin_path, state, ttl, run, int(timeout), compose_file, service, sha, sync, allow_sync, action
        )
    if name == "agent_health":
        return platform_agent.health(bin_path, state, ttl, *args)
    if name == "agent_rollback":
        run, timeout, compose_file, service = args
        return platform_agent.rollback(bin_path, state, ttl, run, int(timeout), compose_file, service)
    if name == "agent_release":
        return platform_agent.release(state, args[0])
    if name == "agent_check":
        return platform_agent.check(state, ttl, allow_sync, root, bin_path, prerequisites=bool(args))
    return platform_agent.logs(state, args[0])

