"""An apply is named by its plan: the plan file, its digest, its workflow id, and
whether a running workflow is that plan's apply.

Anyone who can reach the namespace can start a workflow under the id CI will
use, so `apply`, `approve` and `sign` take module, SHA and plan digest from
the plan file (or flags) the caller holds, never from what a workflow says,
and act only on an `ApplyWorkflow` on this task queue whose start input holds
that very plan.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from temporalio.client import WorkflowExecutionDescription, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from platformctl.cli.common import (
    EXIT_NO_WORKFLOW,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    RPC_TIMEOUT,
    CliError,
    full_sha,
    module_id,
    one_line,
    usage_error,
)
from platformctl.client import PLATFORM_STATUS
from platformctl.config import Settings
from platformctl.models import MAX_INPUT_DEPTH
from platformctl.outcomes import OUTCOMES, PolicyViolation
from platformctl.payload import UnreadablePayload, decode_json
from platformctl.policy.plan import plan_digest

APPLY_WORKFLOW = "ApplyWorkflow"
READ_CAP = 4 << 20  # the server's message limit: a larger file could not be sent at all
DIGEST = re.compile(r"[0-9a-f]{64}")
EXIT_BLOCKED = OUTCOMES["blocked"].exit_code


def blocked(message: str) -> CliError:
    """Input the worker would end `blocked`: exit 3 before anything is started."""
    return CliError(EXIT_BLOCKED, f"{message}: blocked, nothing was started")


def workflow_id(module: str, sha: str, digest: str) -> str:
    """`apply-<module>-<sha12>-<digest12>`: a CI re-run finds its apply, another plan never takes its id."""
    return f"apply-{module}-{sha[:12]}-{digest[:12]}"


def read_request(path: str) -> dict[str, Any]:
    """The apply input: PLAN.json as a whole input, or as the plan alone."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(READ_CAP + 1)
        else:
            with open(path, "rb") as f:
                raw = f.read(READ_CAP + 1)
    except OSError as e:
        raise usage_error(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > READ_CAP:
        raise blocked(f"{path} is over {READ_CAP} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise blocked(f"{path} nests deeper than {MAX_INPUT_DEPTH} levels") from None
    except UnicodeDecodeError as e:
        raise usage_error(f"cannot read {path}: {e}") from None
    except ValueError as e:
        raise usage_error(f"{path} is not JSON: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("plan"), dict):
        request = dict(data)
    elif isinstance(data, dict) and "module" in data:
        request = {"plan": data}
    else:
        raise usage_error(f"{path} holds neither a plan object nor an apply input with a `plan` object")
    plan = request["plan"]
    if not isinstance(plan.get("module"), str) or not plan["module"]:
        raise usage_error(f"{path}: the plan has no `module` string")
    if not isinstance(plan.get("source_sha"), str) or not plan["source_sha"]:
        raise usage_error(f"{path}: the plan has no `source_sha` string")
    return request


def digest_of(path: str, plan: dict[str, Any]) -> str:
    try:
        return plan_digest(plan)
    except PolicyViolation as e:
        raise blocked(f"{path}: {e}") from None


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """What an approval is of: --plan PLAN.json, or --module, --sha and --plan-digest."""
    p.add_argument("--plan", metavar="PLAN.json", help="the plan approved (module, SHA and plan digest come from it)")
    p.add_argument("--module", metavar="M", type=module_id, help="without --plan: the plan's module")
    p.add_argument("--sha", type=full_sha, help="the SHA approved (with --plan, must be the plan's source_sha)")
    p.add_argument("--plan-digest", metavar="HEX", type=plan_digest_arg, help="without --plan: the plan's digest")


def plan_digest_arg(value: str) -> str:
    if not DIGEST.fullmatch(value):
        raise argparse.ArgumentTypeError(f"not a plan digest (64 lowercase hex digits): {value!r}")
    return value


def approved_plan(args: argparse.Namespace) -> tuple[str, str, str]:
    """(module, SHA, plan digest) of what the caller approves, from its plan file or flags."""
    if args.plan is not None:
        if args.module is not None or args.plan_digest is not None:
            raise usage_error("--plan gives the module and plan digest: leave out --module and --plan-digest")
        plan = read_request(args.plan)["plan"]
        module, sha = plan["module"], plan["source_sha"]
        if args.sha is not None and args.sha != sha:
            raise usage_error(f"--sha {args.sha} is not the plan's source_sha {one_line(sha, 64)}")
        return module, sha, digest_of(args.plan, plan)
    if args.module is None or args.sha is None or args.plan_digest is None:
        raise usage_error("say what is approved: --plan PLAN.json, or --module, --sha and --plan-digest")
    return args.module, args.sha, args.plan_digest


async def check_bound(handle: WorkflowHandle[Any, Any], settings: Settings, digest: str, *, running: bool) -> None:
    """Exit 3 unless `handle` is an ApplyWorkflow on this task queue whose plan has
    `digest`. `running`: it must also still run (exit 5 when it has ended or never was)."""
    try:
        described = await handle.describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise CliError(EXIT_NO_WORKFLOW, f"no workflow {one_line(handle.id, 200)} in namespace "
                           f"{settings.namespace}") from None
        raise CliError(EXIT_UNREACHABLE, f"cannot read {handle.id}: {one_line(e.message)}") from None
    if running and described.status != WorkflowExecutionStatus.RUNNING:
        raise CliError(EXIT_REFUSED, f"{handle.id} is not waiting (it ended {ended_status(described)})")
    if described.workflow_type != APPLY_WORKFLOW or described.task_queue != settings.task_queue:
        raise CliError(
            EXIT_BLOCKED,
            f"blocked: id {handle.id} taken by {one_line(described.workflow_type, 100)} on task queue "
            f"{one_line(described.task_queue, 100)}, not an {APPLY_WORKFLOW} on {settings.task_queue}",
        )
    theirs = await _started_digest(handle)
    if theirs != digest:
        raise CliError(
            EXIT_BLOCKED,
            f"blocked: id {handle.id} taken by an apply of another plan "
            f"({'digest ' + theirs[:12] if theirs else 'unreadable'}, not {digest[:12]})",
        )


async def not_waiting(handle: WorkflowHandle[Any, Any], settings: Settings, verb: str) -> CliError:
    """For a message the server refused as NOT_FOUND: no such workflow (66), or it has closed (5)."""
    try:
        described = await handle.describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return CliError(
                EXIT_NO_WORKFLOW, f"no workflow {one_line(handle.id, 200)} in namespace {settings.namespace}"
            )
        return CliError(EXIT_UNREACHABLE, f"cannot read {handle.id}: {one_line(e.message)}")
    return CliError(EXIT_REFUSED, f"{verb} refused: {handle.id} is not waiting (it ended {ended_status(described)})")


def ended_status(described: WorkflowExecutionDescription) -> str:
    """The outcome a closed apply recorded (its PlatformStatus), else how Temporal closed it."""
    status = described.typed_search_attributes.get(PLATFORM_STATUS)
    if status in OUTCOMES:
        return status
    return described.status.name.lower() if described.status else "closed"


async def started_plan(handle: WorkflowHandle[Any, Any]) -> dict[str, Any] | None:
    """The plan the workflow was started with (its first history event: what it runs,
    whatever its queries say); None when it holds no readable plan."""
    try:
        async for event in handle.fetch_history_events(page_size=1, rpc_timeout=RPC_TIMEOUT):
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            request = decode_json(payloads[0]) if len(payloads) == 1 else None
            plan = request.get("plan") if isinstance(request, dict) else None
            return plan if isinstance(plan, dict) else None
    except RPCError as e:
        raise CliError(EXIT_UNREACHABLE, f"cannot read {handle.id}: {one_line(e.message)}") from None
    except (UnreadablePayload, PolicyViolation):
        return None
    return None


async def _started_digest(handle: WorkflowHandle[Any, Any]) -> str | None:
    """The digest of the plan the workflow was started with (started_plan); None when
    it holds no readable plan."""
    plan = await started_plan(handle)
    try:
        return plan_digest(plan) if plan is not None else None
    except PolicyViolation:
        return None
