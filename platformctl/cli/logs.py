"""`platform-apply logs APPLY_ID`: the raw output the host agent kept for one apply.

The apply's run id comes from Temporal (describe), its module from the plan the
workflow was started with, its host from module.yaml and hosts.yaml; then one
read-only command, `platform-agent logs RUN` (platformctl/commands.py), goes to
that host over SSH, with the operator's read-only key when one is given. What
it prints is redacted and shown as plain text on stdout, and stored nowhere:
no state file, no audit line, no log.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from temporalio.service import RPCError, RPCStatusCode

from platformctl import commands
from platformctl.cli.common import (
    EXIT_NO_WORKFLOW,
    EXIT_OK,
    EXIT_UNREACHABLE,
    RPC_TIMEOUT,
    CliError,
    connect_client,
    one_line,
)
from platformctl.cli.plan_binding import APPLY_WORKFLOW, EXIT_BLOCKED, blocked, started_plan
from platformctl.config import Settings, load_hosts, load_module
from platformctl.models import HostConfig
from platformctl.outcomes import PolicyViolation, ToolError
from platformctl.policy.hosts import check_host
from platformctl.redact import plain, redact
from platformctl.transport.base import TransportError
from platformctl.transport.ssh import SshTransport

EXIT_REMOTE = 4  # the contract's remote failure, as doctor's
COMMAND_TIMEOUT_S = 30.0
LOGS_KEY_ENV = "PLATFORM_LOGS_KEY"
AGENT_NOTHING_KEPT = 66  # the agent's answer when it keeps no output for that run


def add_parser(commands_: Any) -> None:
    p = commands_.add_parser(
        "logs",
        help="print the raw output the host agent kept for an apply",
        description="Print the raw output the host agent kept for the apply APPLY_ID (its compose output), "
        "fetched over SSH with the read-only key (platform-agent logs RUN) and stored nowhere. "
        "Secrets are redacted and terminal escapes dropped. Exit 0 with the output, 66 when the workflow "
        "does not exist or the host kept nothing for its run, 3 when it is not an ApplyWorkflow on this "
        "task queue or its module or host is gone (or the agent refuses logs), 4 when the host cannot be "
        f"reached or fails. The key: --key, else ${LOGS_KEY_ENV}, else the host's client_key in hosts.yaml.",
    )
    p.add_argument("apply_id", metavar="APPLY_ID", help="the apply's workflow id")
    p.add_argument(
        "--key", metavar="FILE",
        help=f"the read-only SSH key to use (default: ${LOGS_KEY_ENV}, else hosts.yaml's client_key)",
    )
    p.set_defaults(run=run)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    client = await connect_client(settings)
    apply_id = one_line(args.apply_id, 200)
    try:
        described = await client.get_workflow_handle(args.apply_id).describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise CliError(
                EXIT_NO_WORKFLOW, f"no workflow {apply_id} in namespace {settings.namespace}"
            ) from None
        raise CliError(EXIT_UNREACHABLE, f"cannot read {apply_id}: {one_line(e.message)}") from None
    if described.workflow_type != APPLY_WORKFLOW or described.task_queue != settings.task_queue:
        raise blocked(
            f"{apply_id} is {one_line(described.workflow_type, 100)} on task queue "
            f"{one_line(described.task_queue, 100)}, not an {APPLY_WORKFLOW} on {settings.task_queue}"
        )
    run_id = described.run_id  # ApplyWorkflow never continues as new: this run is the apply's
    plan = await started_plan(client.get_workflow_handle(args.apply_id, run_id=run_id))
    module = plan.get("module") if plan is not None else None
    if not isinstance(module, str):
        raise blocked(f"{apply_id} holds no readable plan with a module")
    host = _host(settings, module, args.key or os.environ.get(LOGS_KEY_ENV) or None)
    try:
        command = commands.agent_logs(run_id)
    except commands.UnsafeCommand as e:
        raise blocked(f"{apply_id}: {e}") from None
    transport = SshTransport()
    try:
        out = await transport.run(host, command, timeout_s=COMMAND_TIMEOUT_S)
    except TransportError as e:  # ConnectFailed, HostKeyMismatch, AuthenticationFailed
        raise CliError(EXIT_REMOTE, f"cannot fetch logs from {host.name}: {one_line(redact(str(e)))}") from None
    finally:
        await transport.close()
    if out.returncode == 0:
        # Raw host text: secrets redacted, escape sequences dropped, other controls
        # written out (plain, as every CLI line); newlines and tabs stay.
        text = plain(redact(out.stdout))
        sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
        return EXIT_OK
    if out.returncode == AGENT_NOTHING_KEPT:
        raise CliError(
            EXIT_NO_WORKFLOW,
            f"host {host.name} kept no output for run {run_id} of {apply_id} (it ran before the agent kept "
            "output, or was removed to stay within the host's bound)",
        )
    if out.returncode == commands.GATE_REFUSED:
        raise CliError(
            EXIT_BLOCKED,
            f"blocked: the host agent on {host.name} refused logs (agent older than v2, or a key that may not run it)",
        )
    if out.returncode is None:
        raise CliError(EXIT_REMOTE, f"the host agent on {host.name} did not answer logs within {COMMAND_TIMEOUT_S:g} s")
    said = one_line(redact(out.stderr), 200)
    raise CliError(
        EXIT_REMOTE,
        f"the host agent on {host.name} answered logs with exit {out.returncode}" + (f": {said}" if said else ""),
    )


def _host(settings: Settings, module_id: str, key: str | None) -> HostConfig:
    """The apply's host from module.yaml and hosts.yaml, with `key` as its client key when given."""
    try:
        module = load_module(settings.platform_root, module_id)
        hosts = load_hosts(settings.platform_root)
    except PolicyViolation as e:  # the module is gone (or no longer valid)
        raise blocked(f"module {one_line(module_id, 100)}: {one_line(e)}") from None
    except ToolError as e:
        raise CliError(EXIT_UNREACHABLE, f"cannot read the platform files: {one_line(e)}") from None
    entry = hosts.get(module.host)
    if entry is None:
        raise blocked(f"host {module.host!r} of module {module_id} is no longer in hosts.yaml")
    if key is not None:
        entry = entry.model_copy(update={"client_key": key})
    try:
        return check_host(module.host, {module.host: entry})
    except PolicyViolation as e:
        raise blocked(one_line(e)) from None
