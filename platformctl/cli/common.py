"""What the subcommands share: exit codes, the Temporal connection, approvals."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode

from platformctl.client import connect, connect_hint, unshown_notices
from platformctl.config import MODULE_ID, Settings
from platformctl.models import Approval, brief_errors
from platformctl.outcomes import OUTCOMES, ApplyError
from platformctl.policy.approval import sign
from platformctl.policy.plan import SHA
from platformctl.redact import plain

EXIT_OK = 0
EXIT_UNREACHABLE = 2  # the contract's tool_error: our side could not do its job
EXIT_REFUSED = 5  # a refused approval, like approval_mismatch
EXIT_USAGE = 64  # BSD sysexits' EX_USAGE
EXIT_NO_WORKFLOW = 66  # BSD sysexits' EX_NOINPUT: no such workflow (or no output kept for its run)
CONNECT_TIMEOUT_S = 5.0
RPC_TIMEOUT = timedelta(seconds=5)


class CliError(Exception):
    """Ends the command with `code` after printing `message` on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def usage_error(message: str) -> CliError:
    return CliError(EXIT_USAGE, message)


async def connect_client(settings: Settings) -> Client:
    """platformctl.client.connect, bounded: an unreachable server is exit 2 within seconds."""
    for notice in unshown_notices(settings):
        print(f"platform-apply: {notice}", file=sys.stderr)
    try:
        return await asyncio.wait_for(connect(settings), CONNECT_TIMEOUT_S)
    except TimeoutError:
        why = f"no answer within {CONNECT_TIMEOUT_S:g} s"
    except Exception as e:  # refused, TLS files unreadable, bad address: all "cannot connect"
        why = " ".join(str(e).split())[:300] or type(e).__name__
    raise CliError(
        EXIT_UNREACHABLE,
        f"cannot reach Temporal at {settings.temporal_address} (namespace {settings.namespace}): {why}"
        + connect_hint(settings, why),
    )


async def require_worker(client: Client, settings: Settings, task_queue: str | None = None) -> None:
    """Exit 2, having sent nothing, when no worker has polled the task queue lately (the
    server forgets a poller minutes after its last poll): a workflow started there, say
    on a mistyped PLATFORM_TASK_QUEUE, would wait in silence with its id taken."""
    queue = task_queue or settings.task_queue
    request = DescribeTaskQueueRequest(
        namespace=settings.namespace, task_queue=TaskQueue(name=queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    try:
        response = await client.workflow_service.describe_task_queue(request, retry=True, timeout=RPC_TIMEOUT)
    except RPCError as e:
        if e.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED):
            return  # an authorizer or proxy that does not let us look: the check is a courtesy, not a gate
        raise CliError(EXIT_UNREACHABLE, f"cannot read task queue {queue!r}: {one_line(e.message)}") from None
    if not response.pollers:
        raise CliError(
            EXIT_UNREACHABLE,
            f"no worker polls task queue {queue!r} in namespace {settings.namespace} (none in the last minutes): "
            "start one, or check PLATFORM_TASK_QUEUE; nothing was sent",
        )


def iso_time(value: str) -> str:
    """argparse type of --expires-at: an ISO-8601 time with a time zone, still ahead (the worker
    refuses an expired approval), kept as written (it is signed)."""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {value!r}") from None
    if at.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no time zone (write e.g. 2026-11-28T12:00:00Z)")
    if at <= datetime.now(UTC):
        raise argparse.ArgumentTypeError(f"{value!r} is in the past: the worker would refuse it as expired")
    return value


def pr_number(value: str) -> int:
    """argparse type of a PR number the worker accepts: a positive integer."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"not a pull request number: {value!r}")
    return number


def module_id(value: str) -> str:
    """argparse type of a MODULE argument: a module id (platformctl.config.MODULE_ID)."""
    if not MODULE_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"invalid module id {value!r}: must match {MODULE_ID.pattern}")
    return value


def full_sha(value: str) -> str:
    """argparse type of a commit SHA: 40 lowercase hex digits, as plans and approvals carry it."""
    if not SHA.fullmatch(value):
        raise argparse.ArgumentTypeError(f"not a full commit SHA (40 lowercase hex digits): {value!r}")
    return value


def non_blank(value: str) -> str:
    """argparse type of a text that must say something (kept as written)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def approval_object(
    sha: str, pr: int, by: str | None, allow_destructive: bool, expires_at: str | None, plan_digest: str | None = None
) -> dict[str, Any]:
    """The contract's approval object, as the flags give it."""
    approval: dict[str, Any] = {
        "approved_sha": sha,
        "approved_pr": pr,
        "approved_by": by,
        "allow_destructive": allow_destructive,
    }
    if expires_at is not None:
        approval["expires_at"] = expires_at
    if plan_digest is not None:
        approval["plan_digest"] = plan_digest
    return approval


def signing_key(settings: Settings) -> bytes | None:
    """The key of PLATFORM_APPROVAL_KEY_FILE, or None when it is not set."""
    try:
        return settings.approval_key()
    except ApplyError as e:
        raise CliError(EXIT_UNREACHABLE, str(e)) from None


def with_signature(key: bytes, module: str, approval: dict[str, Any]) -> dict[str, Any]:
    """`approval` plus its `signature` for `module` (platformctl.policy.approval.sign)."""
    try:
        parsed = Approval.model_validate(approval)
    except ValidationError as e:
        raise usage_error(f"cannot sign the approval: {brief_errors(e)}") from None
    return {**approval, "signature": sign(key, module, parsed)}


def outcome_of(result: Any, module: str, host: str | None, noun: str = "apply") -> dict[str, Any]:
    """The result object of a finished workflow that ends like ApplyWorkflow: its result
    when it completed, the first detail of its non-retryable ApplicationError when it
    failed, a `cancelled` outcome when it closed as Canceled. Anything else (terminated,
    timed out, no result object) is exit 2. `result` is the future `progress.watch` returns."""
    try:
        value = result.result()
    except WorkflowFailureError as e:
        cause = e.cause
        if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], dict):
            return dict(cause.details[0])
        if isinstance(cause, CancelledError):
            return {
                "status": "cancelled", "exitCode": OUTCOMES["cancelled"].exit_code, "module": module,
                "host": host, "error": f"the {noun} was cancelled",
            }
        raise CliError(EXIT_UNREACHABLE, f"the {noun} ended without a result: {one_line(cause or e)}") from None
    if not isinstance(value, dict):
        raise CliError(
            EXIT_UNREACHABLE, f"the {noun} returned something that is not a result object: {one_line(value)}"
        )
    return value


def one_line(text: object, limit: int | None = 300) -> str:
    """`text` on one line, for a terminal: whatever a result holds cannot restyle it,
    or start a line of its own that reads like another (no limit: None)."""
    flat = " ".join(plain(str(text)).split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 3] + "..."


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))
