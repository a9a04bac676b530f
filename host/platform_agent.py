"""The host agent's verbs: the host side of what the worker may do, run by the gate.

host/platform_gate.py checks the command's shape (compose file under ROOT and
not sacred, a service name, a run id) and then calls apply() or logs() here.

    platform-agent apply RUN TIMEOUT FILE SERVICE SHA|-
    platform-agent logs RUN

`apply` is compose up made safe on the host, whatever the control plane does:

- one at a time per compose project: the project (the `name` that
  `docker compose -f FILE config --format json` reports, so `name:` and
  COMPOSE_PROJECT_NAME count) has a lock file held with flock by the agent
  and by compose itself (it inherits the descriptor), so the kernel frees it
  only when both are gone, on death or reboot included. A held lock is waited
  for LOCK_WAIT_S, then answered `busy` with the holder's run id;
- at most once per run: RUN (the worker's workflow run id) keys a record
  written and fsynced as `started` before compose is spawned and `done` with
  the answer after. The same run again gets the recorded answer (`replayed`);
  a `started` record found under the lock means its process is gone
  (`interrupted`: compose may have run, it is never run a second time); the
  same run with another request is a `run_conflict`. Refusals before
  anything ran (busy, checkout, compose config, storage) are not recorded,
  so a retry is answered afresh;
- detached from the SSH channel: compose's output goes to a file, and the
  agent ignores SIGHUP and answers only at the end, so a dropped connection
  does not stop compose half-way. The agent kills compose at TIMEOUT;
- at the approved commit: with a SHA, HEAD must be it and
  `git status --porcelain --untracked-files=no` empty (a local edit on the
  host is unapproved content); `-` is a host that opted out;
- output stays here: the raw output is kept in STATE/output (0700, at most
  MAX_OUTPUT_BYTES a stream, the newest 200 runs), and what leaves
  the host is one JSON line of facts: exit code, duration, byte count and
  SHA-256 of the output, an error class from a fixed list and compose's
  progress lines rebuilt from names that match a template.

`logs RUN` prints one run's kept output, for `platform-apply logs` (the
operator's read-only key may run it, and not `apply`).

Stdlib only; imported only for these verbs, so the gate's other commands do
not pay for `re`, `json` and `hashlib` at start-up.
"""

import fcntl
import hashlib
import json
import os
import re
import select
import time
from _signal import SIG_IGN, SIGHUP, SIGKILL, SIGPIPE, SIGXFSZ, signal

from platform_gate import find_program

PROTOCOL = 2  # AGENT_PROTOCOL in platformctl/commands.py
LOCK_WAIT_S = 5.0
MAX_OUTPUT_BYTES = 1 << 20
MAX_OUTPUT_FILES = 400  # two a run (stdout, stderr): the newest 200 runs
RECORD_FORMAT = 1
RECORD_DAYS = 14  # records of finished runs older than this are removed
NO_OUTPUT = 66  # `logs` of a run with nothing kept (EX_NOINPUT)
PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]{0,127}")  # compose's own rule for project names

# The error classes and progress template of platformctl/policy/remote_output.py
# (tests hold the two copies equal): lower-cased needles, first match wins.
CLASSES = (
    ("env_file", ("failed to read", "env file", "unterminated quoted value", "unexpected character")),
    ("interpolation", ("invalid interpolation", "invalid template", "required variable")),
    ("image", ("pull access denied", "manifest unknown", "no such image", "repository does not exist",
               "failed to resolve reference", "error pulling", "not found: manifest", "manifest for")),
    ("port", ("port is already allocated", "address already in use")),
    ("build", ("failed to solve", "failed to build", "build failed", "dockerfile")),
    ("permission", ("permission denied", "operation not permitted")),
    ("engine", ("cannot connect to the docker daemon", "is the docker daemon running", "docker.sock")),
    ("config", ("no such service", "yaml:", "validating ", "no configuration file", "additional propert",
                "is invalid", "unsupported")),
)  # fmt: skip
NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
VERBS = (
    "Creating|Created|Recreate|Recreated|Starting|Started|Stopping|Stopped|Running|Removing|Removed|"
    "Pulling|Pulled|Waiting|Healthy|Restarting|Restarted|Building|Built|Skipped"
)
PROGRESS = re.compile(rf"\s*(?:(Container|Network|Volume) \"?({NAME})\"?|({NAME}))\s+({VERBS})\s*")
MAX_PROGRESS = 100


def apply(root, bin_path, state, run, timeout, compose_file, service, sha):
    signal(SIGHUP, SIG_IGN)  # a closed session must not stop compose half-way
    answer = {"agent": PROTOCOL, "verb": "apply", "run": run}
    answer.update(_apply(root, bin_path, state, run, timeout, compose_file, service, sha))
    try:
        _out(1, (json.dumps(answer, separators=(",", ":")) + "\n").encode())
    except OSError:
        pass  # the client is gone; the record answers its retry
    return 0


def _out(fd, data):
    """All of `data`: a write to a pipe may take only part of it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _apply(root, bin_path, state, run, timeout, compose_file, service, sha):
    try:
        dirs = _dirs(state)
    except OSError:
        return {"answer": "refused", "reason": "host_storage"}
    env = dict(os.environ, PATH=bin_path)
    project, config_failure = _project(dirs, run, env, compose_file)
    if project is None:
        return config_failure
    lock = os.open(os.path.join(dirs["locks"], project + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    if not _lock(lock):
        return {"answer": "busy", **_holder(dirs, project)}
    _write(os.path.join(dirs["locks"], project + ".holder"), {"run": run, "since": _boottime()}, strict=False)
    path = os.path.join(dirs["runs"], run + ".up.json")
    request = hashlib.sha256(json.dumps([compose_file, service, sha, timeout]).encode()).hexdigest()
    record = _read(path)
    if record is not None:
        if record.get("request") != request:
            return {"answer": "run_conflict"}
        if record.get("state") == "done" and isinstance(record.get("answer"), dict):
            return dict(record["answer"], replayed=True)
        return {"answer": "interrupted"}  # we hold the lock: whoever started it is gone
    if sha != "-":
        checkout = _checkout(root, env, sha)
        if checkout is not None:
            return checkout
    try:
        _write(path, {"format": RECORD_FORMAT, "request": request, "state": "started", "boot_id": _boot_id()})
    except OSError:
        return {"answer": "refused", "reason": "host_storage"}
    os.set_inheritable(lock, True)  # compose holds the project's lock until it ends, even if we die
    facts = _run(dirs, run, "up", env, timeout, ["compose", "-f", compose_file, "up", "-d", service])
    result = {"answer": "ran", **facts, "replayed": False}
    try:
        _write(path, {"format": RECORD_FORMAT, "request": request, "state": "done", "answer": result})
    except OSError:
        pass  # a retry then finds `started` and answers interrupted: never a second run
    _prune(dirs)
    return result


def logs(state, run):
    """Print the kept output of `run`'s steps; NO_OUTPUT when there is none."""
    directory = os.path.join(state, "output")
    try:
        names = sorted(n for n in os.listdir(directory) if n.startswith(run + "."))
    except OSError:
        names = []
    if not names:
        os.write(2, f"platform-agent: no output kept for run {run}\n".encode())
        return NO_OUTPUT
    for name in names:
        step = name[len(run) + 1 : -len(".log")]  # e.g. up.stderr
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        _out(1, f"== {step}: {len(data)} bytes kept ==\n".encode())
        _out(1, data if data.endswith(b"\n") or not data else data + b"\n")
    return 0


def _dirs(state):
    dirs = {name: os.path.join(state, name) for name in ("locks", "runs", "output")}
    os.makedirs(state, mode=0o700, exist_ok=True)
    os.chmod(state, 0o700)  # where raw output lies: the deploy user's alone
    for path in dirs.values():
        os.makedirs(path, mode=0o700, exist_ok=True)
    return dirs


def _project(dirs, run, env, compose_file):
    """(project name, None), or (None, the refusal) when compose cannot load the file."""
    facts = _run(dirs, run, "config", env, 30, ["compose", "-f", compose_file, "config", "--format", "json"])
    if facts["returncode"] == 0:
        stdout = os.path.join(dirs["output"], run + ".config.stdout.log")
        try:
            with open(stdout, "rb") as f:
                name = _project_name(f.read())
        except OSError:
            name = None
        for stream in (stdout, os.path.join(dirs["output"], run + ".config.stderr.log")):
            _unlink(stream)  # the resolved config holds the secrets: kept only when it failed
        if name is not None:
            return name, None
    return None, {"answer": "refused", "reason": "compose_config", "error_class": facts["error_class"] or "config"}


def _project_name(config):
    """The project name in `docker compose config --format json`'s output, or None."""
    try:
        name = json.loads(config).get("name")
    except (ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and PROJECT.fullmatch(name) else None


def hold_project(state, bin_path, compose_file, gone):
    """The project's lock for a gated compose command of the same project (the image
    rollback), so that it never runs beside an `apply`: taken as soon as it is free,
    waited for while `gone()` is false (the client still waits). The descriptor,
    inheritable (the command holds it too), or None when the client went away first;
    -1 for a file compose cannot load: no project to wait for, its command fails anyway."""
    env = dict(os.environ, PATH=bin_path)
    name = _project_name(_capture(env, ["docker", "compose", "-f", compose_file, "config", "--format", "json"]) or b"")
    if name is None:
        return -1
    fd = os.open(os.path.join(_dirs(state)["locks"], name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if gone():
                os.close(fd)
                return None
            time.sleep(0.2)
            continue
        os.set_inheritable(fd, True)
        return fd


def _lock(fd):
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


def _holder(dirs, project):
    holder = _read(os.path.join(dirs["locks"], project + ".holder")) or {}
    run, since = holder.get("run"), holder.get("since")
    return {
        "holder": run if isinstance(run, str) else None,
        "held_s": int(_boottime() - since) if isinstance(since, (int, float)) else None,
    }


def _checkout(root, env, sha):
    head = _capture(env, ["git", "-C", root, "rev-parse", "HEAD"])
    status = _capture(env, ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"])
    head_sha = head.strip() if head is not None and re.fullmatch(rb"[0-9a-f]{40}\n?", head) else None
    if head_sha == sha.encode() and status == b"":
        return None
    return {
        "answer": "refused",
        "reason": "checkout",
        "head": head_sha.decode() if head_sha else None,
        "dirty": status != b"",
    }


def _capture(env, argv):
    """A read-only command's stdout, or None when it failed."""
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_DUP2, null, 2)]
        pid = os.posix_spawn(_program(argv[0], env), argv, env, file_actions=actions, setsigdef=(SIGPIPE, SIGXFSZ))
    finally:
        os.close(w)
        os.close(null)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return b"".join(chunks) if code == 0 else None


def _run(dirs, run, step, env, timeout, argv):
    """Run docker with its stdout and stderr in STATE/output/RUN.STEP.{stdout,stderr}.log
    (two files: one would cut a line of one stream with a block of the other); the facts of the run."""
    paths = [os.path.join(dirs["output"], f"{run}.{step}.{stream}.log") for stream in ("stdout", "stderr")]
    outs = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) for path in paths]
    null = os.open(os.devnull, os.O_RDONLY)
    start = time.monotonic()
    try:
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, outs[0], 1), (os.POSIX_SPAWN_DUP2, outs[1], 2)]
        pid = os.posix_spawn(
            _program("docker", env), ["docker", *argv], env, file_actions=actions, setsid=True,
            setsigdef=(SIGPIPE, SIGXFSZ),
        )
    finally:
        for fd in (*outs, null):
            os.close(fd)
    ended = os.pidfd_open(pid)
    timed_out = not select.select([ended], [], [], timeout)[0]
    if timed_out:
        os.killpg(pid, SIGKILL)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    os.close(ended)
    duration = round(time.monotonic() - start, 3)
    # The digest of stdout, a NUL, then stderr, as platformctl/policy/remote_output.py's digest().
    digest, size, kept, texts = hashlib.sha256(), 0, True, []
    for n, path in enumerate(paths):
        if n:
            digest.update(b"\0")
        stream_size, head = _read_output(path, digest)
        size += stream_size
        if stream_size > MAX_OUTPUT_BYTES:
            os.truncate(path, MAX_OUTPUT_BYTES)
            kept = False
        texts.append(head.decode("utf-8", "replace"))
    text = texts[1] + "\n" + texts[0]
    return {
        "returncode": None if timed_out else (code if code >= 0 else 128 - code),
        "timed_out": timed_out,
        "duration_s": duration,
        "error_class": _error_class(None if timed_out else code, timed_out, text),
        "progress": _progress(text),
        "output_bytes": size,
        "output_sha256": digest.hexdigest(),
        "output_kept": kept,
    }


def _program(name, env):
    # Found by the gate's rule on the admin's fixed PATH; missing, spawn fails with ENOENT.
    return find_program(name, env["PATH"]) or name


def _read_output(path, digest):
    """(size, the first MAX_OUTPUT_BYTES) of one stream's file, its bytes added to `digest`."""
    size, head = 0, b""
    with open(path, "rb") as f:
        while chunk := f.read(65536):
            if size < MAX_OUTPUT_BYTES:
                head += chunk[: MAX_OUTPUT_BYTES - size]
            digest.update(chunk)
            size += len(chunk)
    return size, head


def _error_class(code, timed_out, text):
    if timed_out:
        return "timeout"
    if code == 0:
        return None
    lowered = text.lower()
    for name, needles in CLASSES:
        if any(needle in lowered for needle in needles):
            return name
    return "unknown"


def _progress(text):
    kept = []
    for line in text.splitlines():
        m = PROGRESS.fullmatch(line)
        if m is None:
            continue
        kind, name, bare, verb = m.groups()
        rebuilt = f"{kind} {name} {verb}" if kind else f"{bare} {verb}"
        if not kept or kept[-1] != rebuilt:
            kept.append(rebuilt)
    return kept[-MAX_PROGRESS:]


def _prune(dirs):
    """Keep the newest MAX_OUTPUT_FILES outputs and finished records younger than RECORD_DAYS."""
    outputs = _by_age(dirs["output"])
    for path, _ in outputs[:-MAX_OUTPUT_FILES]:
        _unlink(path)
    cutoff = time.time() - RECORD_DAYS * 86400
    for path, mtime in _by_age(dirs["runs"]):
        if mtime < cutoff and (_read(path) or {}).get("state") == "done":
            _unlink(path)


def _by_age(directory):
    entries = []
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        try:
            entries.append((path, os.stat(path).st_mtime))
        except OSError:
            pass
    return sorted(entries, key=lambda e: e[1])


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _read(path):
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write(path, value, strict=True):
    """Replace `path` with `value`, fsynced (file and directory) before it counts."""
    tmp = path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(value, separators=(",", ":")).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        directory = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        _unlink(tmp)
        if strict:
            raise


def _boottime():
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None
