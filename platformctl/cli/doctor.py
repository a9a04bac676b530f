"""`platform-apply doctor HOST`: is this host ready for applies?

Local checks first (listed in hosts.yaml, passes the allowlist check, client
key loads), then one SSH connection that sends only read-only commands of
platformctl/commands.py: `git_head` (the checkout's SHA; it also proves the
address is reachable, the host key matches the pin and the client key is
accepted), the host agent's `check --prerequisites` (its protocol version,
which only the gate answers, the leases held now, whether the host allows
sync, and what applies need of it: the engine reachable by the deploy user,
the compose v2 plugin, group docker) and `compose_ps` on each compose file of
this host's modules. On a host key that does not match the pin it fetches the
key the host offers (key exchange only, nothing is sent) to show its
fingerprint.

Each failure is one FAIL line and a `fix:` line naming the host/install
option or the command that fixes it. What the host printed is never shown:
failures are told in our own words, from a fixed list of causes.

Not checked remotely, by choice: that the gate refuses what it must. Seeing
it refuse takes sending a shape it must refuse, and doctor sends nothing
outside platformctl/commands.py.

Exit 0 when everything checked is OK, 4 (the contract's remote failure) otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from platformctl import commands
from platformctl.cli.common import EXIT_OK, one_line
from platformctl.config import Settings, load_hosts, load_module, load_sacred_paths
from platformctl.models import HostConfig
from platformctl.outcomes import ApplyError
from platformctl.policy.compose_path import guard_compose_path
from platformctl.policy.health import UnreadablePs, observe
from platformctl.policy.hosts import check_host, is_inline_pin
from platformctl.policy.remote_output import AgentAnswer, UnreadableAnswer, agent_answer, error_class
from platformctl.redact import redact
from platformctl.transport.base import AuthenticationFailed, ConnectFailed, HostKeyMismatch, RemoteOutput
from platformctl.transport.ssh import SshTransport

EXIT_NOT_READY = 4
COMMAND_TIMEOUT_S = 30.0
SHA = re.compile(r"[0-9a-f]{40}")
INSTALL = "on the host, as root, from a checkout of this version: host/install"
# Why `git -C ROOT rev-parse HEAD` failed, from what git, the gate or the login shell said
# (lower-cased needles, first match wins): (needle, cause, fix), {user} and {root} filled in.
GIT_FAILURES = (
    ("dubious ownership", "owned by another user, and not a safe.directory of {user}",
     INSTALL + " --user {user} --checkout {root} (or, as {user}: git config --global --add safe.directory {root})"),
    ("not a git repository", "not a git checkout",
     "clone the platform's repository to {root} on the host, or fix remote_root in hosts.yaml"),
    ("cannot change to", "no such folder",
     "clone the platform's repository to {root} on the host, or fix remote_root in hosts.yaml"),
    ("not found on", "no git on the gate's PATH", "apt-get install git on the host"),
    ("command not allowed", "the gate's forced command names another ROOT than remote_root",
     "make remote_root in hosts.yaml the checkout the forced command names: " + INSTALL
     + " --user {user} --key FILE --checkout {root}"),
    ("currently not available", "the deploy user's login shell runs no command (nologin)",
     INSTALL + " --user {user} (sets its shell to /bin/sh), or usermod -s /bin/sh {user}"),
)  # fmt: skip


def add_parser(commands_: Any) -> None:
    p = commands_.add_parser(
        "doctor",
        help="check that a host of hosts.yaml is ready for applies",
        description="One OK/FAIL line per check of HOST, and a fix: line under each FAIL; exit 0 when all "
        "checked are OK, 4 otherwise. Sends only read-only commands: git rev-parse HEAD, the host agent's "
        "check and docker compose ps.",
    )
    p.add_argument("host", metavar="HOST", help="a key of $PLATFORM_ROOT/hosts.yaml")
    p.set_defaults(run=run)


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failed: bool = False
    other_root: bool = False  # the gate serves another ROOT: it refuses every path under remote_root

    def ok(self, what: str, detail: str) -> None:
        self.lines.append(f"OK   {what}: {detail}")

    def fail(self, what: str, detail: str, fix: str | None = None) -> None:
        self.failed = True
        self.lines.append(f"FAIL {what}: {one_line(redact(detail))}")
        if fix:
            self.lines.append(f"     fix: {one_line(redact(fix), None)}")  # our own words, whole

    def skip(self, what: str, detail: str) -> None:
        self.lines.append(f"-    {what}: {detail}")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    report = Report()
    host = _allowlisted(settings, args.host, report)
    unchecked = "not connected"
    if host is not None and _client_key_loads(host, report):
        transport = SshTransport()
        try:
            if await _checkout(transport, host, report):
                checked = await _agent(transport, host, report)
                current = checked is not None and checked.agent >= commands.AGENT_PROTOCOL
                unchecked = "" if current else f"needs the host agent's v{commands.AGENT_PROTOCOL} `check`"
                if checked is not None and current:
                    _prerequisites(host, checked, report)
                if report.other_root:
                    report.skip("compose ps", "not checked (the gate serves another ROOT than remote_root)")
                else:
                    await _compose_files(transport, settings, host, report, checked.lease_ttl if checked else None)
        finally:
            await transport.close()
    if unchecked:
        report.skip("docker engine, compose", f"not checked ({unchecked})")
    for line in report.lines:
        print(line)
    return EXIT_NOT_READY if report.failed else EXIT_OK


def _allowlisted(settings: Settings, name: str, report: Report) -> HostConfig | None:
    hosts_file = settings.platform_root / "hosts.yaml"
    try:
        hosts = load_hosts(settings.platform_root)
    except ApplyError as e:
        report.fail("hosts.yaml", str(e), f"correct {hosts_file} (docs/platform-files.md)")
        return None
    if name not in hosts:
        report.fail("listed", f"{name!r} is not a host of {hosts_file}", f"add {name} to {hosts_file}")
        return None
    try:
        host = check_host(name, hosts)
    except ApplyError as e:
        report.fail("allowlist", str(e), f"correct {name}'s entry in {hosts_file} (docs/platform-files.md)")
        return None
    report.ok("allowlist", f"{name} is listed and passes the allowlist check ({host.user}@{host.address}:{host.port})")
    return host


def _client_key_loads(host: HostConfig, report: Report) -> bool:
    path = os.path.expanduser(host.client_key)
    try:
        asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as e:
        report.fail(
            "client key file", f"cannot load {path} (missing, encrypted or invalid): {type(e).__name__}",
            f"ssh-keygen -t ed25519 -N '' -f {path}, then install its .pub on the host ({INSTALL} --key FILE)",
        )  # fmt: skip
        return False
    return True


async def _checkout(transport: SshTransport, host: HostConfig, report: Report) -> bool:
    """git rev-parse HEAD: reachability, host key and client key on the way. True when connected."""
    where = f"{host.address}:{host.port}"
    try:
        out = await transport.run(host, commands.git_head(host.remote_root), timeout_s=COMMAND_TIMEOUT_S)
    except ConnectFailed as e:
        report.fail(
            "reachable", str(e),
            f"check address and port of {host.name} in hosts.yaml, that sshd listens there and that this "
            "machine reaches it (tailscale status)",
        )  # fmt: skip
        report.skip("host key", "not checked (not connected)")
        report.skip("client key", "not checked (not connected)")
        return False
    except HostKeyMismatch:
        report.ok("reachable", where)
        await _host_key_mismatch(host, report)
        report.skip("client key", "not checked (the host key did not match)")
        return False
    except AuthenticationFailed:
        report.ok("reachable", where)
        report.ok("host key", "matches the pinned key")
        _key_refused(host, report)
        return False
    report.ok("reachable", where)
    report.ok("host key", "matches the pinned key")
    report.ok("client key", f"accepted for {host.user}")
    head = out.stdout.strip()
    synced = " (sync_checkout: each apply checks out its approved commit first)" if host.sync_checkout else ""
    if out.returncode == 0 and SHA.fullmatch(head):
        report.ok("checkout", f"{host.remote_root} is at {head}{synced}")
    elif host.verify_checkout:
        cause, fix = _git_failure(host, out)
        report.other_root = out.returncode == commands.GATE_REFUSED and "command not allowed" in out.stderr
        report.fail("checkout", f"git rev-parse HEAD in {host.remote_root}: {cause}", fix)
    else:
        report.skip("checkout", f"unreadable ({_git_failure(host, out)[0]}), and not required: verify_checkout is off")
    return True


def _git_failure(host: HostConfig, out: RemoteOutput) -> tuple[str, str | None]:
    """(cause, fix) of a failed `git rev-parse HEAD`, in our words: nothing the host printed."""
    said = (out.stderr + "\n" + out.stdout).lower()
    for needle, cause, fix in GIT_FAILURES:
        if needle in said:
            return f"exit {out.returncode}, {cause}", fix.format(user=host.user, root=host.remote_root)
    if out.returncode == 0:
        return "it printed no commit SHA", None
    return f"exit {out.returncode}", f"on the host, as {host.user}: git -C {host.remote_root} rev-parse HEAD"


async def _host_key_mismatch(host: HostConfig, report: Report) -> None:
    """The key the host offers (fetched by key exchange alone) beside the pinned ones, as fingerprints."""
    pinned = _pinned_keys(host)
    offered = await _offered_key(host, [alg for key in pinned for alg in key.sig_algorithms])
    if offered is None:
        offered = await _offered_key(host, [])  # it has none of the pinned types
    shown = _fingerprint(offered) if offered is not None else "no key (the key exchange failed)"
    pins = ", ".join(_fingerprint(key) for key in pinned) or "no key that matches this address"
    port = f" -p {host.port}" if host.port != 22 else ""
    kind = offered.get_algorithm() if offered is not None else "ed25519"
    report.fail(
        "host key",
        f"{host.address}:{host.port} offered {shown}; pinned: {pins}",
        f"if the host's key really changed, compare that fingerprint with `ssh-keygen -lf "
        f"/etc/ssh/ssh_host_*_key.pub` on the host and pin its line (ssh-keyscan -t {kind}{port} "
        f"{host.address}) in hosts.yaml's known_hosts; otherwise something else answers at that address: "
        "do not connect",
    )


def _pinned_keys(host: HostConfig) -> list[asyncssh.SSHKey]:
    value = host.known_hosts.strip()
    try:
        known = (
            asyncssh.import_known_hosts(value + "\n") if is_inline_pin(value)
            else asyncssh.read_known_hosts(os.path.expanduser(value))
        )  # fmt: skip
    except (OSError, ValueError):
        return []
    return list(known.match(host.address, "", host.port)[0])


async def _offered_key(host: HostConfig, algs: list[bytes]) -> asyncssh.SSHKey | None:
    try:
        return await asyncio.wait_for(
            asyncssh.get_server_host_key(
                host.address, host.port, server_host_key_algs=[a.decode() for a in algs] or (), config=[]
            ),
            host.connect_timeout_seconds,
        )
    except (asyncssh.Error, OSError, ValueError):  # OSError covers TimeoutError
        return None


def _fingerprint(key: asyncssh.SSHKey) -> str:
    """As `ssh-keygen -l` shows it: SHA256:<base64>, after the key's type."""
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"


def _key_refused(host: HostConfig, report: Report) -> None:
    """From the client side a missing user, a locked account and a key not in authorized_keys all
    look alike (sshd answers each with the same refusal, by design): name them, and the one fix."""
    path = os.path.expanduser(host.client_key)
    try:
        shown = _fingerprint(asyncssh.read_private_key(path).convert_to_public())
    except (OSError, asyncssh.KeyImportError):
        shown = path
    report.fail(
        "client key",
        f"{host.address}:{host.port} refused the key {shown} for {host.user}: the user is missing, its account "
        "is locked (sshd refuses a locked account, even for keys), or the key is not in its authorized_keys",
        f"{INSTALL} --user {host.user} --key FILE --checkout {host.remote_root} (FILE: the public key, "
        f"`ssh-keygen -y -f {path}`): it creates the user, unlocks it without a password and writes the "
        "key's forced-command line; the host's sshd log says which it was",
    )


async def _agent(transport: SshTransport, host: HostConfig, report: Report) -> AgentAnswer | None:
    """The agent's `check --prerequisites` (a gate older than v4 refuses it, and is asked the plain
    `check`): its version, the leases it holds (a lease is an apply between its compose up and its
    end, or one whose worker vanished, until it expires) and, from v4, the host's prerequisites.
    The answer, or None when the agent is missing or older than this host needs."""
    upgrade = f"{INSTALL} --user {host.user}"
    try:
        out = await transport.run(host, commands.agent_check(prerequisites=True), timeout_s=COMMAND_TIMEOUT_S)
        if out.returncode == commands.GATE_REFUSED:
            out = await transport.run(host, commands.agent_check(), timeout_s=COMMAND_TIMEOUT_S)
    except (ConnectFailed, HostKeyMismatch, AuthenticationFailed) as e:
        report.fail("host agent", str(e), "run doctor again (the connection dropped)")
        return None
    if out.returncode in (commands.GATE_REFUSED, 127):
        gate = "the gate refused `check`" if out.returncode == commands.GATE_REFUSED else "no gate (exit 127)"
        fix = upgrade + (f" --key FILE --checkout {host.remote_root}" if out.returncode == 127 else "")
        report.fail("host agent", f"older than v3 or missing ({gate})", fix)
        return None
    try:
        answer = agent_answer(out.stdout, None, "check")
    except UnreadableAnswer as e:
        report.fail("host agent", f"{e} (exit {out.returncode})", upgrade)
        return None
    ttl = f", leases expire {answer.lease_ttl} s after their run last spoke" if answer.lease_ttl else ""
    # What this host's applies need: the lease (v3), and sync (v4) where hosts.yaml asks for it.
    needed = commands.SYNC_PROTOCOL if host.sync_checkout else commands.LEASE_PROTOCOL
    if answer.agent < needed:
        why = " (sync_checkout needs it)" if host.sync_checkout else ""
        report.fail("host agent", f"v{answer.agent}, older than v{needed}{why}", upgrade)
    elif answer.agent < commands.AGENT_PROTOCOL:
        report.ok("host agent", f"v{answer.agent}, behind the gate{ttl} (v{commands.AGENT_PROTOCOL}, from {upgrade}, "
                  "also runs a plan's recreate and restart; older agents refuse those plans)")  # fmt: skip
    else:
        report.ok("host agent", f"v{answer.agent}, behind the gate{ttl}")
    if not answer.leases:
        report.ok("leases", "none held")
    for lease in answer.leases:
        report.ok(
            f"lease {lease.project}",
            f"held by run {lease.run} ({lease.step or 'apply'}), expires in {lease.expires_in} s unless renewed",
        )
    return answer if answer.agent >= needed else None


def _prerequisites(host: HostConfig, answer: AgentAnswer, report: Report) -> None:
    """What the agent's `check --prerequisites` found: the engine, group docker, compose, sync."""
    user = host.user
    group = INSTALL + f" --user {user} (adds it to group docker; or usermod -aG docker {user}): new sessions see it"
    if answer.docker == "ok":
        report.ok("docker engine", f"reachable by {user} (engine {answer.engine_version or 'of unknown version'})")
    elif answer.docker == "permission":
        member = {False: ", not in group docker", True: ", although in group docker", None: ""}[answer.docker_group]
        report.fail("docker engine", f"{user} may not use the docker socket (permission denied{member})", group)
    elif answer.docker == "engine":
        report.fail("docker engine", "no docker daemon answers", "on the host: systemctl enable --now docker")
    elif answer.docker == "missing":
        report.fail(
            "docker engine", "no docker on the gate's PATH",
            "install Docker Engine on the host (docs.docker.com/engine/install), or name its folder with "
            "host/install --path",
        )  # fmt: skip
    else:
        report.fail("docker engine", f"`docker version` failed for {user}", f"on the host, as {user}: docker version")
    if answer.docker_group is None:
        report.skip("docker group", "the host has no group docker")
    elif answer.docker_group:
        report.ok("docker group", f"{user} is a member")
    elif answer.docker == "ok":
        report.skip("docker group", f"{user} is not a member (not needed: it reaches the engine)")
    else:
        report.fail("docker group", f"{user} is not a member", group)
    _compose_plugin(answer, report)
    _sync(host, answer, report)


def _compose_plugin(answer: AgentAnswer, report: Report) -> None:
    version = answer.compose_version
    if version is not None and int(version.split(".")[0]) >= 2:
        report.ok("compose", f"v{version} (the compose v2 plugin)")
        return
    found = f"v{version}, not v2" if version else "`docker compose version` fails (no compose v2 plugin)"
    report.fail(
        "compose", found,
        "on the host: apt-get install docker-compose-plugin (from Docker's apt repository); host/install checks it",
    )  # fmt: skip


def _sync(host: HostConfig, answer: AgentAnswer, report: Report) -> None:
    if not host.sync_checkout:
        if answer.sync_allowed:
            report.skip("sync checkout", "allowed by the host, not asked for (sync_checkout is off in hosts.yaml)")
        return
    if not answer.sync_allowed:
        report.fail(
            "sync checkout", "hosts.yaml sets sync_checkout, but the host's forced command has no --allow-sync",
            f"{INSTALL} --allow-sync --user {host.user} --key FILE --checkout {host.remote_root} (rewrites the "
            "key's line), or set sync_checkout: false and sync by hand (docs/security.md)",
        )  # fmt: skip
    elif answer.sync_remote is False:
        report.fail(
            "sync checkout", f"{host.remote_root} has no remote to fetch from",
            f"on the host, as {host.user}: git -C {host.remote_root} remote add origin URL",
        )  # fmt: skip
    else:
        report.ok("sync checkout", "allowed: each apply fetches from the checkout's remote and checks out its commit")


async def _compose_files(
    transport: SshTransport, settings: Settings, host: HostConfig, report: Report, lease_ttl: int | None
) -> None:
    """compose ps on each compose file of this host's modules (one service each), and
    each module's health poll against the host's lease TTL."""
    checked: set[str] = set()
    root = settings.platform_root
    module_dir = root / "modules"
    names = sorted(p.name for p in module_dir.iterdir() if (p / "module.yaml").is_file()) if module_dir.is_dir() else []
    for name in names:
        try:
            module = load_module(root, name)
        except ApplyError:
            continue  # an unreadable module of some host: not this doctor's question
        if module.host != host.name:
            continue
        poll = module.spec.health.poll_seconds
        if lease_ttl is not None and poll * 3 > lease_ttl:
            # Each poll renews the lease: one that lapses between polls restarts the stable window.
            report.fail(
                f"health poll of {name}", f"every {poll} s, more than a third of the host's lease TTL ({lease_ttl} s)",
                f"lower health.poll_seconds to {lease_ttl // 3} or less in modules/{name}/module.yaml, or raise "
                f"the gate's lease TTL ({INSTALL} --lease-ttl S ...)",
            )  # fmt: skip
        try:
            path = guard_compose_path(module.spec.runtime.compose_file, host.remote_root, load_sacred_paths(root))
        except ApplyError as e:
            report.fail(f"compose file of {name}", str(e), f"correct compose_file in modules/{name}/module.yaml")
            continue
        if path in checked:
            continue
        checked.add(path)
        service = module.compose_service
        try:
            out = await transport.run(host, commands.compose_ps(path, service), timeout_s=COMMAND_TIMEOUT_S)
        except commands.UnsafeCommand as e:
            report.fail(f"compose ps {service}", str(e), f"correct modules/{name}/module.yaml")
            continue
        except (ConnectFailed, HostKeyMismatch, AuthenticationFailed) as e:
            report.fail(f"compose ps {service}", str(e), "run doctor again (the connection dropped)")
            continue
        if out.returncode == commands.GATE_REFUSED:
            report.fail(
                f"compose ps {service}",
                f"{path}: the host's gate refused `ps --all` (exit {commands.GATE_REFUSED}): it is older than "
                "this worker, which then sees no stopped container",
                f"install the current host/platform-gate: {INSTALL} --user {host.user}",
            )  # fmt: skip
            continue
        if out.returncode != 0:
            why = error_class(out.returncode, out.timed_out, out.stdout, out.stderr)
            report.fail(f"compose ps {service}", f"{path}: exit {out.returncode} ({why})",
                        f"on the host, as {host.user}: docker compose -f {path} ps {service}")  # fmt: skip
            continue
        try:
            seen = observe(out.stdout, service)
        except UnreadablePs as e:
            report.fail(f"compose ps {service}", str(e), f"on the host, as {host.user}: docker compose version")
            continue
        state = f"{seen.state or 'no container'}" + (f", {seen.health}" if seen.health else "")
        state += f", exit code {seen.exit_code}" if seen.exit_code is not None else ""
        report.ok(f"compose ps {service}", f"{path} ({state})")
    if not checked:
        report.skip("compose ps", f"not checked (no module of {host.name} in {module_dir})")
