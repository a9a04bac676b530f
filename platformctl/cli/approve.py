"""`platform-apply approve WORKFLOW_ID --plan PLAN.json`: approve a waiting apply through the `approve` Update.

The Update's validator refuses at once, with the reason, an approval that
does not match the plan, so a wrong SHA is known in the same call (exit 5).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta
from typing import Any

from temporalio.client import (
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.service import RPCError, RPCStatusCode

from platformctl.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    CliError,
    approval_object,
    connect_client,
    iso_time,
    one_line,
    require_worker,
    signing_key,
    with_signature,
)
from platformctl.cli.plan_binding import add_plan_arguments, approved_plan, check_bound
from platformctl.config import Settings

QUERY_TIMEOUT = timedelta(seconds=5)
UPDATE_TIMEOUT_S = 60.0  # a worker that polls answers within seconds, however long the apply waits


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "approve",
        help="approve a waiting apply (the approve Update)",
        description="Approve the apply WORKFLOW_ID of the plan in PLAN.json (or of --module, --sha and "
        "--plan-digest) through the `approve` Update: exit 0 when accepted, 5 with the reason when refused "
        "or when the apply has ended, 66 when no workflow has that id, 3 when WORKFLOW_ID is not an apply of "
        "that plan on this task queue. Signed when "
        "PLATFORM_APPROVAL_KEY_FILE is set.",
    )
    p.add_argument("workflow_id", metavar="WORKFLOW_ID")
    add_plan_arguments(p)
    p.add_argument("--pr", required=True, type=int, metavar="N", help="the pull request number")
    p.add_argument("--by", metavar="NAME", help="who approves (recorded in the audit line)")
    p.add_argument("--allow-destructive", action="store_true", help="approve recreate/remove actions")
    p.add_argument("--expires-at", metavar="T", type=iso_time, help="ISO-8601 time the approval ends")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    # What is signed comes from what the caller holds, never from what the workflow reports.
    module, sha, digest = approved_plan(args)
    approval = approval_object(sha, args.pr, args.by, args.allow_destructive, args.expires_at, digest)
    key = signing_key(settings)
    client = await connect_client(settings)
    handle = client.get_workflow_handle(args.workflow_id)
    await check_bound(handle, settings, digest, running=True)
    await require_worker(client, settings)
    if key is not None:
        approval = with_signature(key, module, approval)
    refused = await send_approval(handle, approval)
    if refused is not None:
        return refused
    print(f"approved {args.workflow_id}")
    return EXIT_OK


async def _still_waits(handle: WorkflowHandle[Any, Any]) -> str:
    """Whether a refused approval left the apply waiting: CI's next step depends on it."""
    try:
        phase = (await handle.query("status", rpc_timeout=QUERY_TIMEOUT)).get("phase")
    except Exception:  # closed meanwhile, or no worker answers the query
        return "whether the apply still waits is unknown (platform-apply status shows it)"
    if phase in ("validating", "awaiting_approval"):
        return "the apply still waits for an approval"
    return f"the apply no longer waits for one (phase {one_line(phase, 40)})"


async def send_approval(handle: WorkflowHandle[Any, Any], approval: dict[str, Any]) -> int | None:
    """Send `approval` through the Update; None when accepted, else the exit code (reason on stderr)."""
    try:
        await asyncio.wait_for(handle.execute_update("approve", approval), UPDATE_TIMEOUT_S)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):  # the SDK's name for a cancelled wait
        raise CliError(
            EXIT_UNREACHABLE,
            f"{handle.id} did not answer the approval within {UPDATE_TIMEOUT_S:g} s (is its worker stuck?); "
            "the server keeps it, so a worker may still take it",
        ) from None
    except WorkflowUpdateFailedError as e:
        cause = e.cause
        reason = cause.message if isinstance(cause, FailureError) else str(cause)
        print(f"approval refused: {one_line(reason)}; {await _still_waits(handle)}", file=sys.stderr)
        return EXIT_REFUSED
    except ApplicationError as e:
        print(f"approval refused: {one_line(e.message)}", file=sys.stderr)
        return EXIT_REFUSED
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:  # it closed since it was checked
            print(f"approval refused: {handle.id} is not waiting (it has ended)", file=sys.stderr)
            return EXIT_REFUSED
        raise
    return None
