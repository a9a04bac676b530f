"""`platform-apply doctor HOST`: is this host ready for applies?

Local checks first (listed in hosts.yaml, passes the allowlist check, client
key loads), then one SSH connection that sends only read-only commands of
platformctl/commands.py: `git_head` (the checkout's SHA; it also proves the
address is reachable, the host key matches the pin and the client key is
accepted), the host agent's `check` (its protocol version, which only the
gate answers, and the project leases held now) and `compose_ps` on each
compose file of this host's modules.

Not checked remotely, by choice: that the gate refuses what it must. Seeing
it refuse takes sending a shape it must refuse, and doctor sends nothing
outside platformctl/commands.py. The compose version is not checked either:
no allowed command prints it.

Exit 0 when everything checked is OK, 4 (the contract's remote failure) otherwise.
"""

from __future__ import annotations

import argparse
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
from platformctl.policy.hosts import check_host
from platformctl.policy.remote_output import UnreadableAnswer, agent_answer
from platformctl.redact import redact
from platformctl.transport.base import AuthenticationFailed, ConnectFailed, HostKeyMismatch, RemoteOutput
from platformctl.transport.ssh import SshTransport

EXIT_NOT_READY = 4
COMMAND_TIMEOUT_S = 30.0
SHA = re.compile(r"[0-9a-f]{40}")


def add_parser(commands_: Any) -> None:
    p = commands_.add_parser(
        "doctor",
        help="check that a host of hosts.yaml is ready for applies",
        description="One OK/FAIL line per check of HOST; exit 0 when all checked are OK, 4 otherwise. "
        "Sends only the read-only commands git rev-parse HEAD and docker compose ps.",
    )
    p.add_argument("host", metavar="HOST", help="a key of $PLATFORM_ROOT/hosts.yaml")
    p.set_defaults(run=run)


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failed: bool = False

    def ok(self, what: str, detail: str) -> None:
        self.lines.append(f"OK   {what}: {detail}")

    def fail(self, what: str, detail: str) -> None:
        self.failed = True
        self.lines.append(f"FAIL {what}: {one_line(redact(detail))}")

    def skip(self, what: str, detail: str) -> None:
        self.lines.append(f"-    {what}: {detail}")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    report = Report()
    host = _allowlisted(settings, args.host, report)
    if host is not None and _client_key_loads(host, report):
        transport = SshTransport()
        try:
            if await _checkout(transport, host, report):
                lease_ttl = await _agent(transport, host, report)
                await _compose_files(transport, settings, host, report, lease_ttl)
        finally:
            await transport.close()
    report.skip("compose version", "not checked (no allowed command prints it)")
    for line in report.lines:
        print(line)
    return EXIT_NOT_READY if report.failed else EXIT_OK


def _allowlisted(settings: Settings, name: str, report: Report) -> HostConfig | None:
    try:
        hosts = load_hosts(settings.platform_root)
    except ApplyError as e:
        report.fail("hosts.yaml", str(e))
        return None
    if name not in hosts:
        report.fail("listed", f"{name!r} is not a host of {settings.platform_root / 'hosts.yaml'}")
        return None
    try:
        host = check_host(name, hosts)
    except ApplyError as e:
        report.fail("allowlist", str(e))
        return None
    report.ok("allowlist", f"{name} is listed and passes the allowlist check ({host.user}@{host.address}:{host.port})")
    return host


def _client_key_loads(host: HostConfig, report: Report) -> bool:
    path = os.path.expanduser(host.client_key)
    try:
        asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as e:
        report.fail("client key file", f"cannot load {path} (missing, encrypted or invalid): {type(e).__name__}")
        return False
    return True


async def _checkout(transport: SshTransport, host: HostConfig, report: Report) -> bool:
    """git rev-parse HEAD: reachability, host key and client key on the way. True when connected."""
    where = f"{host.address}:{host.port}"
    try:
        out = await transport.run(host, commands.git_head(host.remote_root), timeout_s=COMMAND_TIMEOUT_S)
    except ConnectFailed as e:
        report.fail("reachable", str(e))
        report.skip("host key", "not checked (not connected)")
        report.skip("client key", "not checked (not connected)")
        return False
    except HostKeyMismatch as e:
        report.ok("reachable", where)
        report.fail("host key", str(e))
        report.skip("client key", "not checked (the host key did not match)")
        return False
    except AuthenticationFailed as e:
        report.ok("reachable", where)
        report.ok("host key", "matches the pinned key")
        report.fail("client key", str(e))
        return False
    report.ok("reachable", where)
    report.ok("host key", "matches the pinned key")
    report.ok("client key", f"accepted for {host.user}")
    head = out.stdout.strip()
    if out.returncode == 0 and SHA.fullmatch(head):
        report.ok("checkout", f"{host.remote_root} is at {head}")
    elif host.verify_checkout:
        report.fail("checkout", f"git rev-parse HEAD in {host.remote_root}: {_failure(out)}")
    else:
        report.skip("checkout", f"unreadable ({_failure(out)}), and not required: verify_checkout is off")
    return True


async def _agent(transport: SshTransport, host: HostConfig, report: Report) -> int | None:
    """The agent's version and the leases it holds: a lease is an apply between its
    compose up and its end (or one whose worker vanished, until it expires). Its lease
    TTL, when it says (v3 from its second release on)."""
    try:
        out = await transport.run(host, commands.agent_check(), timeout_s=COMMAND_TIMEOUT_S)
    except (ConnectFailed, HostKeyMismatch, AuthenticationFailed) as e:
        report.fail("host agent", str(e))
        return None
    upgrade = "install host/ on the host (docs/security.md, preparing a host)"
    if out.returncode in (commands.GATE_REFUSED, 127):
        gate = "the gate refused `check`" if out.returncode == commands.GATE_REFUSED else "no gate (exit 127)"
        report.fail("host agent", f"older than v{commands.AGENT_PROTOCOL} or missing ({gate}): {upgrade}")
        return None
    try:
        answer = agent_answer(out.stdout, None, "check")
    except UnreadableAnswer as e:
        report.fail("host agent", f"{e} ({_failure(out)})")
        return None
    if answer.agent < commands.AGENT_PROTOCOL:
        report.fail("host agent", f"v{answer.agent}, older than this worker's v{commands.AGENT_PROTOCOL}: {upgrade}")
        return None
    ttl = f", leases expire {answer.lease_ttl} s after their run last spoke" if answer.lease_ttl else ""
    report.ok("host agent", f"v{answer.agent}, behind the gate{ttl}")
    if not answer.leases:
        report.ok("leases", "none held")
    for lease in answer.leases:
        report.ok(
            f"lease {lease.project}",
            f"held by run {lease.run} ({lease.step or 'apply'}), expires in {lease.expires_in} s unless renewed",
        )
    return answer.lease_ttl


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
                f"health poll of {name}",
                f"every {poll} s, more than a third of the host's lease TTL ({lease_ttl} s): lower "
                f"health.poll_seconds to {lease_ttl // 3} or less, or raise the gate's --lease-ttl",
            )
        try:
            path = guard_compose_path(module.spec.runtime.compose_file, host.remote_root, load_sacred_paths(root))
        except ApplyError as e:
            report.fail(f"compose file of {name}", str(e))
            continue
        if path in checked:
            continue
        checked.add(path)
        service = module.compose_service
        try:
            out = await transport.run(host, commands.compose_ps(path, service), timeout_s=COMMAND_TIMEOUT_S)
        except commands.UnsafeCommand as e:
            report.fail(f"compose ps {service}", str(e))
            continue
        except (ConnectFailed, HostKeyMismatch, AuthenticationFailed) as e:
            report.fail(f"compose ps {service}", str(e))
            continue
        if out.returncode == commands.GATE_REFUSED:
            report.fail(
                f"compose ps {service}",
                f"{path}: the host's gate refused `ps --all` (exit {commands.GATE_REFUSED}): it is older than "
                "this worker, which then sees no stopped container; install the current host/platform-gate",
            )
            continue
        if out.returncode != 0:
            report.fail(f"compose ps {service}", f"{path}: {_failure(out)}")
            continue
        try:
            seen = observe(out.stdout, service)
        except UnreadablePs as e:
            report.fail(f"compose ps {service}", str(e))
            continue
        state = f"{seen.state or 'no container'}" + (f", {seen.health}" if seen.health else "")
        state += f", exit code {seen.exit_code}" if seen.exit_code is not None else ""
        report.ok(f"compose ps {service}", f"{path} ({state})")
    if not checked:
        report.skip("compose ps", f"not checked (no module of {host.name} in {module_dir})")


def _failure(out: RemoteOutput) -> str:
    said = (out.stderr.strip() or out.stdout.strip()).splitlines()
    return f"exit {out.returncode}" + (f": {one_line(redact(said[-1]))}" if said else "")
