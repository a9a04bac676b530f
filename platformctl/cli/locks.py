"""`platform-apply locks`: who holds each compose project's lock, and who waits.

Lists the running workflows under a lock's id (visibility, so a lock taken a
moment ago may show a second later) and asks each lock its `state`. Anything
else under such an id (another type, or a lock on a queue this platform does
not poll) is a squatter: every apply of that project ends `blocked` until an
operator ends it, and the line says so.

With --hosts it also asks each host of hosts.yaml, side by side, which
project leases its agent holds (`platform-agent check`, read-only; the key
as for `logs`): the lease is what stops a second apply on the host, the
Temporal lock only queues.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import timedelta
from typing import Any

from platformctl import commands
from platformctl.cli.common import EXIT_OK, connect_client, one_line
from platformctl.cli.logs import LOGS_KEY_ENV
from platformctl.config import Settings, load_hosts
from platformctl.models import PROJECT_LOCK_WORKFLOW, HostConfig
from platformctl.outcomes import ApplyError
from platformctl.policy.hosts import check_host
from platformctl.policy.remote_output import UnreadableAnswer, agent_answer
from platformctl.redact import redact
from platformctl.transport.base import TransportError
from platformctl.transport.ssh import SshTransport

LOCK_PREFIX = "platform-lock:"
LOCKS_QUERY = f"WorkflowId STARTS_WITH '{LOCK_PREFIX}' AND ExecutionStatus = 'Running'"
QUERY_TIMEOUT = timedelta(seconds=5)


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "locks",
        help="list the held compose-project locks",
        description="One line per running lock: `<host>/<project> held by <workflow> (waiting: ...)`. "
        "With --hosts, also one line per lease the hosts' agents hold (over SSH, read-only).",
    )
    p.add_argument("--hosts", action="store_true", help="also ask every host of hosts.yaml for its leases")
    p.add_argument(
        "--key", metavar="FILE",
        help=f"with --hosts, the read-only SSH key (default: ${LOGS_KEY_ENV}, else hosts.yaml's client_key)",
    )
    p.set_defaults(run=run)


def lock_line(workflow_id: str, state: dict[str, Any]) -> str:
    """One lock's line, shown plain: a lock's state is whatever its workflow answers."""
    name = state.get("lock") or workflow_id.removeprefix(LOCK_PREFIX).replace(":", "/", 1)
    line = f"{name} held by {state.get('holder') or '?'}"
    waiting = [str(w) for w in state.get("waiting") or []]
    if waiting:
        line += f" (waiting: {', '.join(waiting)})"
    if state.get("released"):
        line += " (released, handing on)"
    return one_line(line, limit=None)


def squatter_line(workflow_id: str, workflow_type: str, task_queue: str) -> str:
    return one_line(
        f"{workflow_id}: SQUATTED by {workflow_type} on task queue {task_queue!r}: applies of that project "
        f"end blocked until it is ended (temporal workflow terminate --workflow-id {workflow_id})",
        limit=None,
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    client = await connect_client(settings)
    lines = []
    async for execution in client.list_workflows(LOCKS_QUERY):
        if execution.workflow_type != PROJECT_LOCK_WORKFLOW or execution.task_queue != settings.task_queue:
            lines.append(squatter_line(execution.id, execution.workflow_type, execution.task_queue))
            continue
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        try:
            state = await handle.query("state", rpc_timeout=QUERY_TIMEOUT)
        except Exception as e:  # closed in between, or no worker to answer: say so, go on
            lines.append(one_line(f"{execution.id}: state unavailable ({one_line(e, 120)})", limit=None))
            continue
        lines.append(lock_line(execution.id, state if isinstance(state, dict) else {}))
    if args.hosts:
        lines += await host_leases(settings, args.key or os.environ.get(LOGS_KEY_ENV) or None)
    for line in sorted(lines) or ["no locks held"]:
        print(line)
    return EXIT_OK


async def host_leases(settings: Settings, key: str | None) -> list[str]:
    """A line per lease held on each host, or why a host could not say."""
    try:
        hosts = load_hosts(settings.platform_root)
    except ApplyError as e:
        return [one_line(f"host leases unknown: {e}", limit=None)]
    transport = SshTransport()
    try:
        found = await asyncio.gather(*(_leases(transport, name, entry, key) for name, entry in sorted(hosts.items())))
    finally:
        await transport.close()
    return [line for lines in found for line in lines]


async def _leases(transport: SshTransport, name: str, entry: HostConfig, key: str | None) -> list[str]:
    try:
        host = check_host(name, {name: entry.model_copy(update={"client_key": key}) if key else entry})
        out = await transport.run(host, commands.agent_check(), timeout_s=30)
        if out.returncode == commands.GATE_REFUSED:
            return [f"{name}: host leases unknown (its agent is older than v{commands.LEASE_PROTOCOL})"]
        answer = agent_answer(out.stdout, None, "check")
    except (ApplyError, TransportError, UnreadableAnswer) as e:
        return [one_line(f"{name}: host leases unknown ({redact(str(e))})", limit=None)]
    return [
        one_line(f"{name}/{lease.project} leased on the host to run {lease.run} ({lease.step or 'apply'}), "
                 f"expires in {lease.expires_in} s unless renewed", limit=None)
        for lease in answer.leases
    ]  # fmt: skip
