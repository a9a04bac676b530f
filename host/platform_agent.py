"""The host agent's verbs: the host side of what the worker may do, run by the gate.

host/platform_gate.py checks the command's shape (compose file under ROOT and
not sacred, a service name, a run id) and then calls apply() or logs() here.

    platform-agent apply RUN TIMEOUT FILE SERVICE SHA|- --lease [--sync] [--action recreate|restart]
    platform-agent health RUN FILE SERVICE
    platform-agent rollback RUN TIMEOUT FILE SERVICE
    platform-agent release RUN
    platform-agent check [--prerequisites]
    platform-agent logs RUN

`apply` is compose up made safe on the host, whatever the control plane does:

- one at a time per compose project: the project (the `name` that
  `docker compose -f FILE config --format json` reports, so `name:` and
  COMPOSE_PROJECT_NAME count) has a lock file held with flock by the agent
  and by compose itself (it inherits the descriptor), so the kernel frees it
  only when both are gone, on death or reboot included. Beside it, the
  project's lease (STATE/leases/PROJECT.json, fsynced) says which run may
  change the project: taken by `apply`, renewed by that run's `health` and
  `rollback`, freed by its `release`, and expired TTL seconds (the admin's
  --lease-ttl, on CLOCK_BOOTTIME) after its run last spoke, so a vanished
  worker cannot hold a project for ever. Another run's `apply` is answered
  `busy` (holder, expires_in) while the lease or the lock is held;
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
  host is unapproved content); `-` is a host that opted out. The checkout is
  one for all projects, so its lock (locks/_checkout.lock) is held shared
  from that check until compose up ends;
- with `--sync` (refused unless the admin's forced command says
  --allow-sync), under the lease and that lock held alone, first: a checkout
  with edited tracked files is refused (`sync_dirty`); `git fetch` from the
  checkout's own configured remote when SHA is not there yet, refused
  (`sync_unreachable`) when it still is not; then `git checkout --detach
  SHA`. Git runs as argv, without hooks, and its output stays with the run's;
- output stays here: the raw output is kept in STATE/output (0700, at most
  MAX_OUTPUT_BYTES a stream, the newest 200 runs), and what leaves
  the host is one JSON line of facts: exit code, duration, byte count and
  SHA-256 of the output, an error class from a fixed list and compose's
  progress lines rebuilt from names that match a template;
- the plan's action from a fixed table (ACTIONS): none is `up -d SERVICE`,
  `--action recreate` `up -d --force-recreate --no-deps SERVICE`, `--action
  restart` `restart SERVICE`. The action is part of the run's record, so the
  same run asking another action is a `run_conflict`.

`health` is one observation of the service, stopped containers included:
per container its state, health, exit code and restart count, facts only.
For a failing container (exited, dead, restarting or unhealthy) it keeps the
last LOG_LINES log lines and the healthcheck's output with the run's output.
For a run that applied, it renews the lease; an expired lease still free is
taken back (`retaken`), one another run took is `lease_lost`.

`rollback` puts the service back on the image `apply` saw before compose up
for this run (recorded here, never taken from the request), refused for a
service the compose file does not define; once per run, under the lease.

`release RUN` frees the run's lease; `check` lists the held leases, the
protocol version and whether sync is allowed, and with --prerequisites what
applies need of the host, as facts for `doctor` (the engine reachable by
this user, the compose plugin's version, group docker, a remote to sync
from); `logs RUN` prints one run's kept output, for
`platform-apply logs` (the operator's read-only key may run these two).

A host admin breaks a stuck lease locally, never over SSH (and host/install
lists the leases held before it replaces the agent):

    python3 /usr/local/lib/platform-gate/platform_agent.py break-lease PROJECT [--state DIR]
    python3 /usr/local/lib/platform-gate/platform_agent.py leases --state DIR

Stdlib only; imported only for these verbs, so the gate's other commands do
not pay for `re`, `json` and `hashlib` at start-up.
"""

import fcntl
import grp
import hashlib
import json
import os
import re
import select
import time
from _signal import SIG_IGN, SIGHUP, SIGKILL, SIGPIPE, SIGXFSZ, signal

from platform_gate import Refused, find_program

PROTOCOL = 5  # AGENT_PROTOCOL in platformctl/commands.py
# compose's argv between FILE and SERVICE per action (the gate allows only these names).
ACTIONS = {
    "up": ("up", "-d"),
    "recreate": ("up", "-d", "--force-recreate", "--no-deps"),
    "restart": ("restart",),
}
LOCK_WAIT_S = 5.0
LEASE_TTL_S = 600  # the gate's --lease-ttl default
MAX_LEASE_TTL_S = 3600
LEASE_FORMAT = 1
MAX_OUTPUT_BYTES = 1 << 20
MAX_OUTPUT_FILES = 400  # two a run (stdout, stderr): the newest 200 runs
RECORD_FORMAT = 1
RECORD_DAYS = 14  # records of finished runs older than this are removed
NO_OUTPUT = 66  # `logs` of a run with nothing kept (EX_NOINPUT)
# No project is called this (PROJECT starts with a letter or digit): the checkout's own lock.
CHECKOUT_LOCK = "_checkout.lock"
SYNC_FETCH_TIMEOUT_S = 60  # SYNC_FETCH_TIMEOUT_S in platformctl/commands.py
PROBE_TIMEOUT_S, PROBE_MAX_BYTES = 20, 65536  # `check --prerequisites`'s reads
VERSION = re.compile(r"v?([0-9]{1,5}(?:\.[0-9]{1,5}){1,3}(?:[-+~][0-9A-Za-z.+~-]{1,40})?)")
PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]{0,127}")  # compose's own rule for project names
IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")
CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")
# What docker reports (platformctl/policy/health.py's lists); anything else is "unknown".
STATES = frozenset({"created", "running", "paused", "restarting", "removing", "exited", "dead"})
HEALTHS = frozenset({"", "starting", "healthy", "unhealthy"})
MAX_CONTAINERS = 100
FAILING_STATES = frozenset({"exited", "dead", "restarting"})  # with health "unhealthy": logs are kept
MAX_KEPT_CONTAINERS, LOG_LINES, KEEP_TIMEOUT_S = 3, 100, 10
STORAGE = {"answer": "refused", "reason": "host_storage"}  # nothing could be recorded, so nothing ran

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


def apply(
    root, bin_path, state, ttl, run, timeout, compose_file, service, sha, sync=False, allow_sync=False, action="up"
):
    signal(SIGHUP, SIG_IGN)  # a closed session must not stop compose half-way
    up = _apply(root, bin_path, state, ttl, run, timeout, compose_file, service, sha, sync, allow_sync, action)
    return _answer("apply", run, up)


def health(bin_path, state, ttl, run, compose_file, service):
    return _answer("health", run, _health(bin_path, state, ttl, run, compose_file, service))


def rollback(bin_path, state, ttl, run, timeout, compose_file, service):
    signal(SIGHUP, SIG_IGN)
    return _answer("rollback", run, _rollback(bin_path, state, ttl, run, timeout, compose_file, service))


def release(state, run):
    """Free every lease `run` holds (normally one)."""
    try:
        dirs = _dirs(state)
    except OSError:
        return _answer("release", run, STORAGE)
    released = 0
    for project in _lease_projects(dirs):
        if (_read(_lease_path(dirs, project)) or {}).get("run") != run:
            continue  # another run's: not ours to wait for
        fd = _lock_file(dirs, project)
        try:
            if not _lock(fd):
                continue  # another run's verb holds the lock: then it holds the lease, not us
            if (_read(_lease_path(dirs, project)) or {}).get("run") == run:
                _unlink(_lease_path(dirs, project))
                released += 1
        finally:
            os.close(fd)
    return _answer("release", run, {"answer": "released", "released": released})


def check(state, ttl, allow_sync=False, root=None, bin_path=None, prerequisites=False):
    """The protocol version, the lease TTL, the leases held now and whether sync is allowed, for
    `platform-apply doctor` (and, with `prerequisites`, what applies need of the host)."""
    leases = [
        {"project": project, "run": lease["run"], "step": lease.get("step"), "expires_in": left}
        for project, lease, left in _held_leases(state)
    ]
    facts = {"answer": "checked", "lease_ttl": ttl, "leases": leases, "sync_allowed": allow_sync}
    if prerequisites:
        facts.update(_prerequisites(root, dict(os.environ, PATH=bin_path), allow_sync))
    return _answer("check", None, facts)


def _prerequisites(root, env, allow_sync):
    """Facts only: whether this user reaches the engine (else why, from a fixed list) and its
    version, the compose plugin's version (None: no `docker compose`), whether this process is
    in group docker (None: the host has none) and, where sync is allowed, whether the checkout
    has a remote to fetch from."""
    facts = {"docker": "missing", "engine_version": None, "compose_version": None}
    try:
        facts["docker_group"] = grp.getgrnam("docker").gr_gid in {os.getgid(), *os.getgroups()}
    except KeyError:
        facts["docker_group"] = None
    if find_program("docker", env["PATH"]):
        code, out, err = _probe(env, ["docker", "version", "--format", "{{.Server.Version}}"])
        facts["docker"] = "ok" if code == 0 else _engine_failure(err)
        facts["engine_version"] = _version(out) if code == 0 else None
        code, out, _ = _probe(env, ["docker", "compose", "version", "--short"])
        facts["compose_version"] = _version(out) if code == 0 else None
    if allow_sync:
        code, out, _ = _probe(env, ["git", "-C", root, "remote"])
        facts["sync_remote"] = code == 0 and out.strip() != b""
    return facts


def _engine_failure(err):
    lowered = err.lower()
    if b"permission denied" in lowered:
        return "permission"  # the socket is the docker group's: this user is not in it
    if any(n in lowered for n in (b"cannot connect to the docker daemon", b"is the docker daemon running")):
        return "engine"
    return "unknown"


def _version(out):
    match = VERSION.fullmatch(out.strip().decode("ascii", "replace"))
    return match[1] if match else None


def _held_leases(state):
    """(project, lease, seconds left) of each lease held: unexpired, or its run's verb still
    running under the project's lock (a lease never expires under a running verb)."""
    dirs = {name: os.path.join(state, name) for name in ("locks", "leases")}
    held = []
    for project in _lease_projects(dirs):
        lease = _read(_lease_path(dirs, project)) or {}
        left = _expires_in(lease)
        if left is not None and (left > 0 or _running(dirs, project)):
            held.append((project, lease, max(0, int(left))))
    return held


def _running(dirs, project):
    """Whether a verb holds the project's lock now (read-only: a shared lock, let go at once)."""
    try:
        fd = os.open(os.path.join(dirs["locks"], project + ".lock"), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _answer(verb, run, facts):
    answer = {"agent": PROTOCOL, "verb": verb, "run": run, **facts}
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


def _apply(root, bin_path, state, ttl, run, timeout, compose_file, service, sha, sync, allow_sync, action):
    argv = ["compose", "-f", compose_file, *ACTIONS[action], service]  # KeyError: never past the gate
    try:
        dirs, env, _ = _prepare(state, bin_path, run)
    except OSError:
        return STORAGE
    config, config_failure = _config(dirs, run, env, compose_file)
    if config is None:
        return config_failure
    project = config[0]
    lock = _lock_file(dirs, project)
    if not _lock(lock):
        return _busy(dirs, project)
    path = os.path.join(dirs["runs"], run + ".up.json")
    # `up` hashes as before v5, so a run recorded by a v4 agent still replays.
    key = [compose_file, service, sha, timeout] + ([action] if action != "up" else [])
    request = hashlib.sha256(json.dumps(key).encode()).hexdigest()
    record = _read(path)
    if record is not None:
        if record.get("request") != request:
            return {"answer": "run_conflict"}
        if record.get("state") == "done" and isinstance(record.get("answer"), dict):
            if _lease_of(dirs, project, run) != "lost":
                _take_lease(dirs, project, run, "apply", ttl, strict=False)
            return dict(record["answer"], replayed=True)
        return {"answer": "interrupted"}  # we hold the lock: whoever started it is gone
    if _lease_of(dirs, project, run) == "lost":
        return _busy(dirs, project)
    if sync and not allow_sync:
        return {"answer": "refused", "reason": "sync_not_allowed"}  # the host's admin holds this line
    synced = False
    if sha != "-":
        checkout_lock = os.open(os.path.join(dirs["locks"], CHECKOUT_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        refusal, synced = _at_commit(dirs, run, root, env, sha, checkout_lock, sync)
        if refusal is not None:
            return refusal
        os.set_inheritable(checkout_lock, True)  # no sync moves the files under compose, even if we die
    images = _images(env, compose_file, service)
    try:
        _take_lease(dirs, project, run, "apply", ttl)
        _write(path, {"format": RECORD_FORMAT, "request": request, "state": "started", "boot_id": _boot_id(),
                      "project": project, "images": images, "action": action})  # fmt: skip
    except OSError:
        return STORAGE
    os.set_inheritable(lock, True)  # compose holds the project's lock until it ends, even if we die
    facts = _run(dirs, run, "up", env, timeout, argv)
    result = {"answer": "ran", **facts, "lease_ttl": ttl, "replayed": False, "synced": synced, "action": action}
    _take_lease(dirs, project, run, "apply", ttl, strict=False)  # its TTL counts from the end of compose up
    try:
        _write(path, {"format": RECORD_FORMAT, "request": request, "state": "done", "project": project,
                      "images": images, "action": action, "answer": result})  # fmt: skip
    except OSError:
        pass  # a retry then finds `started` and answers interrupted: never a second run
    _prune(dirs)
    return result


def _health(bin_path, state, ttl, run, compose_file, service):
    try:
        dirs, env, applied = _prepare(state, bin_path, run)
    except OSError:
        return STORAGE
    lease = "none"  # a run that did not apply here (an operator rollback's) only looks
    if applied is not None and isinstance(applied.get("project"), str):
        lease = _renew(dirs, applied["project"], run, "health", ttl)
        if lease in ("busy", "lost"):
            return _lost_or_busy(dirs, applied["project"], lease)
    out = _capture(env, ["docker", "compose", "-f", compose_file, "ps", "--all", "--format", "json", service])
    if out is None:
        return {"answer": "unobserved", "lease": lease}
    rows = _ps_rows(out)
    if rows is None:
        return {"answer": "unobserved", "lease": lease}
    containers, failing = [], []
    for row in rows:
        one_off = "com.docker.compose.oneoff=True" in str(row.get("Labels", "")).split(",")
        if row.get("Service", service) != service or one_off:
            continue  # `docker compose run` containers are not the service
        state_, health_, code, cid = row.get("State"), row.get("Health"), row.get("ExitCode"), row.get("ID")
        valid_id = isinstance(cid, str) and CONTAINER_ID.fullmatch(cid)
        containers.append({
            "state": state_ if state_ in STATES else "unknown",
            "health": health_ if health_ in HEALTHS else "unknown",
            "exit_code": code if type(code) is int and 0 <= code <= 255 else None,
            "restart_count": _restart_count(env, cid) if valid_id else None,
        })  # fmt: skip
        if valid_id and (state_ in FAILING_STATES or health_ == "unhealthy"):
            failing.append(cid)
    kept = _keep_failing(dirs, run, env, failing[:MAX_KEPT_CONTAINERS])
    return {"answer": "observed", "lease": lease, "containers": containers[:MAX_CONTAINERS], "logs_kept": kept}


def _keep_failing(dirs, run, env, containers):
    """Keep each failing container's last log lines and healthcheck output with the run's
    output (only `platform-apply logs` shows them); how many containers' logs were kept."""
    kept = 0
    for cid in containers:
        step = f"health.{cid[:12]}"
        try:
            logs = _run(dirs, run, step, env, KEEP_TIMEOUT_S, ["logs", "--tail", str(LOG_LINES), cid])
            probe = ["inspect", "--format", "{{json .State.Health}}", cid]
            _run(dirs, run, step + ".check", env, KEEP_TIMEOUT_S, probe)
        except OSError:
            break  # a full disk: the verdict does not need them
        kept += logs["returncode"] == 0
    if containers:
        _prune(dirs)
    return kept


def _rollback(bin_path, state, ttl, run, timeout, compose_file, service):
    try:
        dirs, env, applied = _prepare(state, bin_path, run)
    except OSError:
        return STORAGE
    if applied is None:
        return {"answer": "refused", "reason": "not_applied"}  # compose up never ran here for this run
    images = applied.get("images")
    if not isinstance(images, list) or len(images) != 1 or not isinstance(applied.get("project"), str):
        return {"answer": "refused", "reason": "no_snapshot"}  # not one image to go back to
    config, config_failure = _config(dirs, run, env, compose_file)
    if config is None:
        return config_failure
    project, services = config
    if service not in services:
        return {"answer": "refused", "reason": "undefined_service"}
    if project != applied["project"]:
        return {"answer": "run_conflict"}
    lock = _lock_file(dirs, project)
    if not _lock(lock):
        return _busy(dirs, project)
    if _lease_of(dirs, project, run) == "lost":
        return _lost_or_busy(dirs, project, "lost")
    path = os.path.join(dirs["runs"], run + ".rollback.json")
    request = hashlib.sha256(json.dumps([compose_file, service, timeout]).encode()).hexdigest()
    record = _read(path)
    if record is not None:
        if record.get("request") != request:
            return {"answer": "run_conflict"}
        if record.get("state") == "done" and isinstance(record.get("answer"), dict):
            return dict(record["answer"], replayed=True)
        return {"answer": "interrupted"}
    try:
        _take_lease(dirs, project, run, "rollback", ttl)
        _write(path, {"format": RECORD_FORMAT, "request": request, "state": "started", "boot_id": _boot_id()})
    except OSError:
        return STORAGE
    os.set_inheritable(lock, True)
    pin = json.dumps({"services": {service: {"image": images[0]}}}, separators=(",", ":")).encode("ascii")
    argv = ["compose", "-f", compose_file, "-f", "-", "up", "-d", "--no-deps", "--no-build", "--pull", "never", service]
    facts = _run(dirs, run, "rollback", env, timeout, argv, stdin=pin)
    result = {"answer": "ran", **facts, "image_id": images[0], "replayed": False}
    _take_lease(dirs, project, run, "rollback", ttl, strict=False)
    try:
        _write(path, {"format": RECORD_FORMAT, "request": request, "state": "done", "answer": result})
    except OSError:
        pass
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


def _prepare(state, bin_path, run):
    """(dirs, the environment docker runs in, `run`'s compose up record or None); OSError
    when the state folder cannot be made."""
    dirs = _dirs(state)
    return dirs, dict(os.environ, PATH=bin_path), _read(os.path.join(dirs["runs"], run + ".up.json"))


def _dirs(state):
    dirs = {name: os.path.join(state, name) for name in ("locks", "leases", "runs", "output")}
    os.makedirs(state, mode=0o700, exist_ok=True)
    os.chmod(state, 0o700)  # where raw output lies: the deploy user's alone
    for path in dirs.values():
        os.makedirs(path, mode=0o700, exist_ok=True)
    return dirs


def _config(dirs, run, env, compose_file):
    """((project name, service names), None), or (None, the refusal) when compose cannot load the file."""
    facts = _run(dirs, run, "config", env, 30, ["compose", "-f", compose_file, "config", "--format", "json"])
    if facts["returncode"] == 0:
        stdout = os.path.join(dirs["output"], run + ".config.stdout.log")
        try:
            with open(stdout, "rb") as f:
                config = _parse_config(f.read())
        except OSError:
            config = None
        for stream in (stdout, os.path.join(dirs["output"], run + ".config.stderr.log")):
            _unlink(stream)  # the resolved config holds the secrets: kept only when it failed
        if config is not None:
            return config, None
    return None, {"answer": "refused", "reason": "compose_config", "error_class": facts["error_class"] or "config"}


def _parse_config(config):
    """(project name, service names) from `docker compose config --format json`'s output, or None."""
    try:
        value = json.loads(config)
        name, services = value.get("name"), value.get("services") or {}
    except (ValueError, AttributeError):
        return None
    if not (isinstance(name, str) and PROJECT.fullmatch(name) and isinstance(services, dict)):
        return None
    return name, frozenset(services)


def hold_project(state, bin_path, compose_file, service, gone):
    """The project's lock for a gated compose command of the same project (the pin
    rollback of an operator or of a worker older than the `rollback` verb), so that
    it never runs beside an `apply`: taken as soon as it is free, waited for while
    `gone()` is false (the client still waits). The descriptor, inheritable (the
    command holds it too), or None when the client went away first; -1 for a file
    compose cannot load: no project to wait for, its command fails anyway. Refused
    for a service the file does not define, or while a run holds the project's lease."""
    env = dict(os.environ, PATH=bin_path)
    out = _capture(env, ["docker", "compose", "-f", compose_file, "config", "--format", "json"])
    config = _parse_config(out or b"")
    if config is None:
        return -1
    name, services = config
    if service not in services:
        raise Refused(f"platform-gate: service {service} is not defined by {compose_file}")
    dirs = _dirs(state)
    fd = _lock_file(dirs, name)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if gone():
                os.close(fd)
                return None
            time.sleep(0.2)
            continue
        lease = _read(_lease_path(dirs, name)) or {}
        left = _expires_in(lease)
        if left is not None and left > 0:
            os.close(fd)
            raise Refused(f"platform-gate: project {name} is leased to run {lease.get('run')} for {int(left)} s more")
        os.set_inheritable(fd, True)
        return fd


def _lock_file(dirs, project):
    return os.open(os.path.join(dirs["locks"], project + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)


def _lock(fd, mode=fcntl.LOCK_EX):
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


def _lease_path(dirs, project):
    return os.path.join(dirs["leases"], project + ".json")


def _lease_projects(dirs):
    try:
        names = os.listdir(dirs["leases"])
    except OSError:
        return []
    return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and PROJECT.fullmatch(n[: -len(".json")]))


def _expires_in(lease):
    """Seconds until `lease` expires (<= 0: expired), or None for no lease. After a
    reboot it counts from boot, so its run can still finish its health check or rollback."""
    expiry, ttl = lease.get("expiry"), lease.get("ttl")
    if not (isinstance(expiry, (int, float)) and isinstance(ttl, (int, float)) and isinstance(lease.get("run"), str)):
        return None
    if lease.get("boot_id") != _boot_id():
        expiry = ttl
    return expiry - _boottime()


def _lease_of(dirs, project, run):
    """Under the project's lock: "mine", "free" (none, or expired), or "lost" (another run's, unexpired)."""
    lease = _read(_lease_path(dirs, project)) or {}
    left = _expires_in(lease)
    if left is None:
        return "free"
    if lease["run"] == run:
        return "mine" if left > 0 else "free"
    return "lost" if left > 0 else "free"


def _take_lease(dirs, project, run, step, ttl, strict=True):
    lease = {"format": LEASE_FORMAT, "run": run, "step": step, "boot_id": _boot_id(), "expiry": _boottime() + ttl,
             "ttl": ttl}  # fmt: skip
    _write(_lease_path(dirs, project), lease, strict=strict)


def _renew(dirs, project, run, step, ttl):
    """For a run that applied: "held" (renewed), "retaken" (it had expired or gone, and
    was free), "lost" (another run holds it) or "busy" (another verb holds the lock)."""
    fd = _lock_file(dirs, project)
    try:
        if not _lock(fd):
            return "busy"
        now = _lease_of(dirs, project, run)
        if now == "lost":
            return "lost"
        try:
            _take_lease(dirs, project, run, step, ttl)
        except OSError:
            pass  # not renewed on a full disk: it may expire, and is then taken back or lost
        return "held" if now == "mine" else "retaken"
    finally:
        os.close(fd)


def _busy(dirs, project):
    lease = _read(_lease_path(dirs, project)) or {}
    left = _expires_in(lease)
    return {"answer": "busy", "holder": lease.get("run") if left is not None else None,
            "expires_in": max(0, int(left)) if left is not None else None}  # fmt: skip


def _lost_or_busy(dirs, project, what):
    if what == "busy":
        return _busy(dirs, project)
    return {"answer": "lease_lost", "holder": (_read(_lease_path(dirs, project)) or {}).get("run")}


def _images(env, compose_file, service):
    """The distinct image IDs the service's containers run now, or None when compose cannot say."""
    out = _capture(env, ["docker", "compose", "-f", compose_file, "images", "--format", "json", service])
    rows = _ps_rows(out) if out is not None else None
    if rows is None:
        return None
    ids = []
    for row in rows:
        image = row.get("ID")
        if not (isinstance(image, str) and IMAGE_ID.fullmatch(image)):
            return None
        if image not in ids:
            ids.append(image)
    return ids


def _ps_rows(out):
    """The objects of a compose JSON listing (one array, `null`, or one object a line), or None."""
    text = out.strip()
    try:
        rows = json.loads(text) if text[:1] in (b"[", b"n") else [json.loads(line) for line in text.splitlines()]
    except (ValueError, RecursionError):
        return None
    rows = rows or []
    return rows if isinstance(rows, list) and all(isinstance(r, dict) for r in rows) else None


def _restart_count(env, container):
    out = _capture(env, ["docker", "inspect", "--format", "{{.RestartCount}}", container])
    return int(out) if out is not None and re.fullmatch(rb"[0-9]{1,9}\n?", out) else None


def _at_commit(dirs, run, root, env, sha, lock, sync):
    """(None, whether it synced) once the checkout is at `sha`, unedited, with `lock` held shared
    (no sync of another project moves it meanwhile); else (the refusal, False). With `sync`, a
    checkout elsewhere is first moved to `sha` with `lock` held alone."""
    if not _lock(lock, fcntl.LOCK_SH):
        return _CHECKOUT_BUSY, False
    refusal = _checkout(root, env, sha)
    if refusal is None or not sync:
        return refusal, False
    fcntl.flock(lock, fcntl.LOCK_UN)  # then alone: a failed conversion would drop it anyway
    if not _lock(lock, fcntl.LOCK_EX):
        return _CHECKOUT_BUSY, False
    refusal = _sync(dirs, run, root, env, sha)
    # Not atomic: another sync may move it in between, and the check below then refuses.
    if refusal is None and not _lock(lock, fcntl.LOCK_SH):
        refusal = _CHECKOUT_BUSY
    return refusal or _checkout(root, env, sha), refusal is None


_CHECKOUT_BUSY = {"answer": "busy", "holder": None, "expires_in": None, "busy_with": "checkout"}


def _sync(dirs, run, root, env, sha):
    """None once `sha` is checked out detached, fetched from the checkout's own remote if it was
    not there; else the refusal. Hooks off: the checkout's hooks are no approved content."""
    git = ["git", "-c", "core.hooksPath=/dev/null", "-C", root]
    code, status, _ = _probe(env, git + ["status", "--porcelain", "--untracked-files=no"])
    if code != 0:
        return {"answer": "refused", "reason": "sync_failed"}
    if status:
        return {"answer": "refused", "reason": "sync_dirty"}  # a local edit: never thrown away
    commit = git + ["cat-file", "-e", sha + "^{commit}"]
    if _probe(env, commit)[0] != 0:
        fetch_env = dict(env, GIT_TERMINAL_PROMPT="0")  # no session to ask for a password
        fetched = _run(dirs, run, "sync.fetch", fetch_env, SYNC_FETCH_TIMEOUT_S, git[1:] + ["fetch"], program="git")
        if _probe(env, commit)[0] != 0:
            return {"answer": "refused", "reason": "sync_unreachable", "fetched": fetched["returncode"] == 0}
    out = _run(dirs, run, "sync.checkout", env, SYNC_FETCH_TIMEOUT_S, git[1:] + ["checkout", "--detach", sha],
               program="git")  # fmt: skip
    return None if out["returncode"] == 0 else {"answer": "refused", "reason": "sync_failed"}


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


def _run(dirs, run, step, env, timeout, argv, stdin=None, program="docker"):
    """Run docker (or `program`) with its stdout and stderr in STATE/output/RUN.STEP.{stdout,stderr}.log
    (two files: one would cut a line of one stream with a block of the other), and
    `stdin` (at most PIPE_BUF bytes) then EOF on its standard input; the facts of the run."""
    paths = [os.path.join(dirs["output"], f"{run}.{step}.{stream}.log") for stream in ("stdout", "stderr")]
    outs = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) for path in paths]
    if stdin is None:
        source = os.open(os.devnull, os.O_RDONLY)
    else:
        source, feed = os.pipe()
        os.write(feed, stdin)  # fits the pipe's buffer whole: written before compose starts
        os.close(feed)
    start = time.monotonic()
    try:
        actions = [(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate((source, *outs))]
        pid = os.posix_spawn(
            _program(program, env), [program, *argv], env, file_actions=actions, setsid=True,
            setsigdef=(SIGPIPE, SIGXFSZ),
        )
    finally:
        for fd in (*outs, source):
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


def _probe(env, argv, timeout=PROBE_TIMEOUT_S):
    """(exit code, or None when it could not start or was killed at `timeout`, stdout, stderr) of a
    read-only command, each stream cut at PROBE_MAX_BYTES."""
    pipes = [os.pipe(), os.pipe()]
    null = os.open(os.devnull, os.O_RDONLY)
    actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, pipes[0][1], 1),
               (os.POSIX_SPAWN_DUP2, pipes[1][1], 2)]  # fmt: skip
    try:
        pid = os.posix_spawn(_program(argv[0], env), argv, env, file_actions=actions, setsid=True,
                             setsigdef=(SIGPIPE, SIGXFSZ))  # fmt: skip
    except OSError:
        pid = None  # not installed: spawn fails with ENOENT
    finally:
        for fd in (null, pipes[0][1], pipes[1][1]):
            os.close(fd)
    kept = {r: b"" for r, _ in pipes}
    reading, timed_out = set(kept) if pid is not None else set(), False
    deadline = time.monotonic() + timeout
    while reading:
        ready = select.select(list(reading), [], [], max(0, deadline - time.monotonic()))[0]
        if not ready:
            os.killpg(pid, SIGKILL)
            timed_out = True
            break
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                reading.discard(fd)
            kept[fd] = (kept[fd] + chunk)[:PROBE_MAX_BYTES]
    code = None if pid is None else os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    for r, _ in pipes:
        os.close(r)
    return None if timed_out else code, kept[pipes[0][0]], kept[pipes[1][0]]


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
    leased = {(_read(_lease_path(dirs, p)) or {}).get("run") for p in _lease_projects(dirs)}
    for path, mtime in _by_age(dirs["runs"]):
        if mtime < cutoff and (_read(path) or {}).get("state") == "done":
            if os.path.basename(path).split(".")[0] not in leased:
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


def break_lease(argv):
    """`break-lease PROJECT [--state DIR]`: a host admin frees a stuck lease, run on the
    host by hand (the gate never runs it). Waits for a running verb of the project."""
    if len(argv) not in (1, 3) or len(argv) == 3 and argv[1] != "--state" or not PROJECT.fullmatch(argv[0]):
        os.write(2, b"usage: platform_agent.py break-lease PROJECT [--state DIR]\n")
        return 64
    state = argv[2] if len(argv) == 3 else os.path.join(os.path.expanduser("~"), ".platform-agent")
    dirs = {"locks": os.path.join(state, "locks"), "leases": os.path.join(state, "leases")}
    lease = _read(_lease_path(dirs, argv[0]))
    if lease is None:
        os.write(1, f"no lease on project {argv[0]}\n".encode())
        return 0
    fd = _lock_file(dirs, argv[0])
    fcntl.flock(fd, fcntl.LOCK_EX)  # not beside a verb that is running: kill that one first
    _unlink(_lease_path(dirs, argv[0]))
    os.write(1, f"broke the lease of run {lease.get('run')} on project {argv[0]}\n".encode())
    return 0


def held_leases(argv):
    """`leases --state DIR`: print the leases held; exit 0 when none, 75 (EX_TEMPFAIL) when some."""
    if len(argv) != 2 or argv[0] != "--state":
        os.write(2, b"usage: platform_agent.py leases --state DIR\n")
        return 64
    held = _held_leases(argv[1])
    for project, lease, left in held:
        os.write(1, f"project {project}: leased to run {lease['run']} for {left} s more\n".encode())
    return 75 if held else 0


if __name__ == "__main__":
    import sys

    admin = {"break-lease": break_lease, "leases": held_leases, "version": lambda _: print(PROTOCOL) or 0}
    if sys.argv[1:2] == [] or sys.argv[1] not in admin:
        os.write(2, b"usage: platform_agent.py break-lease|leases|version ... (the verbs run through the gate)\n")
        sys.exit(64)
    sys.exit(admin[sys.argv[1]](sys.argv[2:]))
