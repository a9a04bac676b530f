"""`platform-apply approve WORKFLOW_ID`: approve a waiting apply through the `approve` Update.

The Update's validator refuses at once, with the reason, an approval that
does not match the plan, so a wrong SHA is known in the same call (exit 5).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from temporalio.client import (
    WorkflowExecutionStatus,
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
    RPC_TIMEOUT,
    CliError,
    approval_object,
    connect_client,
    iso_time,
    one_line,
    require_worker,
    signing_key,
    with_signature,
)
from platformctl.cli.progress import status_of
from platformctl.client import SEARCH_ATTRIBUTES
from platformctl.config import Settings

PLATFORM_MODULE = SEARCH_ATTRIBUTES[0]
UPDATE_TIMEOUT_S = 60.0  # a worker that polls answers within seconds, however long the apply waits


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "approve",
        help="approve a waiting apply (the approve Update)",
        description="Approve the apply WORKFLOW_ID through the `approve` Update: exit 0 when accepted, "
        "5 with the reason when refused. Signed when PLATFORM_APPROVAL_KEY_FILE is set.",
    )
    p.add_argument("workflow_id", metavar="WORKFLOW_ID")
    p.add_argument("--sha", required=True, help="the SHA approved (must be the plan's source_sha)")
    p.add_argument("--pr", required=True, type=int, metavar="N", help="the pull request number")
    p.add_argument("--by", metavar="NAME", help="who approves (recorded in the audit line)")
    p.add_argument("--allow-destructive", action="store_true", help="approve recreate/remove actions")
    p.add_argument("--expires-at", metavar="T", type=iso_time, help="ISO-8601 time the approval ends")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    approval = approval_object(args.sha, args.pr, args.by, args.allow_destructive, args.expires_at)
    key = signing_key(settings)
    client = await connect_client(settings)
    handle = client.get_workflow_handle(args.workflow_id)
    await require_worker(client, settings, await running_task_queue(handle))
    if key is not None:
        approval = with_signature(key, await module_of(handle), approval)
    refused = await send_approval(handle, approval)
    if refused is not None:
        return refused
    print(f"approved {args.workflow_id}")
    return EXIT_OK


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
        print(f"approval refused: {one_line(reason)}", file=sys.stderr)
        return EXIT_REFUSED
    except ApplicationError as e:
        print(f"approval refused: {one_line(e.message)}", file=sys.stderr)
        return EXIT_REFUSED
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:  # no such workflow, or it has closed
            print(f"approval refused: {handle.id} is not a running apply ({one_line(e.message)})", file=sys.stderr)
            return EXIT_REFUSED
        raise
    return None


async def running_task_queue(handle: WorkflowHandle[Any, Any]) -> str:
    """The task queue of a running workflow; exit 5 when there is none by that id."""
    try:
        described = await handle.describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise CliError(EXIT_REFUSED, f"approval refused: {handle.id} is not a running apply") from None
        raise CliError(EXIT_UNREACHABLE, f"cannot read {handle.id}: {one_line(e.message)}") from None
    if described.status != WorkflowExecutionStatus.RUNNING:
        status = described.status.name.lower() if described.status else "closed"
        raise CliError(EXIT_REFUSED, f"approval refused: {handle.id} is not a running apply (it is {status})")
    return described.task_queue


async def module_of(handle: WorkflowHandle[Any, Any]) -> str:
    """Which module the apply is for (a signature covers it): its status, else its search attribute."""
    status = await status_of(handle)
    if status and isinstance(status.get("module"), str):
        return str(status["module"])
    try:
        described = await handle.describe()
    except RPCError as e:
        raise CliError(EXIT_UNREACHABLE, f"cannot read {handle.id}: {one_line(e.message)}") from None
    module = described.typed_search_attributes.get(PLATFORM_MODULE)
    if not module:
        raise CliError(EXIT_UNREACHABLE, f"cannot tell which module {handle.id} applies, and a signature names it")
    return module
