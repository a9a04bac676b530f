"""`platform-apply apply PLAN.json`: start an ApplyWorkflow (or attach to the one in flight) and wait.

The workflow id is `apply-<module>-<sha12>-<digest12>` with the conflict
policy USE_EXISTING, so a CI re-run attaches to the apply in flight instead
of starting a second one, and only when that is an ApplyWorkflow on this task
queue started with this very plan (plan_binding.py). Once that apply has
closed, a re-run starts a new one (compose up -d converges, so applying an
applied SHA again is harmless).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter

from platformctl.cli.approve import send_approval
from platformctl.cli.common import (
    EXIT_OK,
    EXIT_UNREACHABLE,
    approval_object,
    connect_client,
    iso_time,
    one_line,
    outcome_of,
    print_json,
    require_worker,
    signing_key,
    usage_error,
    with_signature,
)
from platformctl.cli.plan_binding import APPLY_WORKFLOW, blocked, check_bound, digest_of, read_request, workflow_id
from platformctl.cli.progress import Progress, status_of, watch
from platformctl.config import Settings, load_module
from platformctl.models import MAX_INPUT_BYTES
from platformctl.outcomes import OUTCOMES
from platformctl.payload import UnreadablePayload, check_shape

MAX_DETAIL_CHANGES = 20


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "apply",
        help="start an apply from a plan file and wait for its outcome",
        description="Start ApplyWorkflow for PLAN.json (the plan object, or a whole apply input with "
        "`plan` and `approval`) and wait for the result. Exits with the outcome's exitCode.",
    )
    p.add_argument("plan_file", metavar="PLAN.json", help='the plan, or {"plan": ..., "approval": ...}; - for stdin')
    approval = p.add_argument_group("approval (sent with the start; signed when PLATFORM_APPROVAL_KEY_FILE is set)")
    approval.add_argument("--approve-sha", metavar="SHA", help="the SHA approved (the merge commit)")
    approval.add_argument("--approve-pr", metavar="N", type=int, help="the pull request number")
    approval.add_argument("--approved-by", metavar="NAME", help="who approves (recorded in the audit line)")
    approval.add_argument("--allow-destructive", action="store_true", help="approve recreate/remove actions")
    approval.add_argument("--expires-at", metavar="T", type=iso_time, help="ISO-8601 time the approval ends")
    p.add_argument("--no-wait", action="store_true", help="exit 0 once the apply started; print its workflow id")
    p.add_argument("--json", action="store_true", help="print the full ApplyResult JSON instead of one line")
    p.set_defaults(run=run)


def flag_approval(args: argparse.Namespace) -> dict[str, Any] | None:
    given = [args.approve_sha, args.approve_pr, args.approved_by, args.expires_at]
    if args.approve_sha is None and args.approve_pr is None:
        if any(v is not None for v in given) or args.allow_destructive:
            raise usage_error("--approved-by, --allow-destructive and --expires-at need --approve-sha and --approve-pr")
        return None
    if args.approve_sha is None or args.approve_pr is None:
        raise usage_error("--approve-sha and --approve-pr go together")
    return approval_object(args.approve_sha, args.approve_pr, args.approved_by, args.allow_destructive, args.expires_at)


def bind(path: str, approval: dict[str, Any], digest: str, signing: bool) -> dict[str, Any]:
    """The approval naming the plan it approves: its plan_digest is the file's plan's."""
    named = approval.get("plan_digest")
    if named is not None and named != digest:
        raise usage_error(f"{path}: the approval's plan_digest is not the digest of the plan beside it ({digest})")
    if named is None and (signing or not approval.get("signature")):  # never alter what someone else signed
        return {**approval, "plan_digest": digest}
    return approval


def check_bounds(path: str, request: dict[str, Any]) -> None:
    """The worker's own bounds, on the payload this client would send (compact JSON, however
    the file is laid out): past one it would end the apply blocked."""
    try:
        check_shape(request)
        size = len(pydantic_data_converter.payload_converter.to_payloads([request])[0].data)
    except UnreadablePayload as e:
        raise blocked(f"{path}: {e}") from None
    if size > MAX_INPUT_BYTES:
        raise blocked(f"{path} makes an input of {size} bytes, over the {MAX_INPUT_BYTES}-byte bound")


def module_host(settings: Settings, module: str) -> str | None:
    """The module's host from $PLATFORM_ROOT/modules/<module>/module.yaml, when readable."""
    try:
        return load_module(settings.platform_root, module).host
    except Exception:  # unknown here, unreadable, invalid: the summary just leaves the host out
        return None


def static_summary(module: str, host: str | None, sha: str, approval: dict[str, Any] | None) -> str:
    where = f"{module}@{host}" if host else module
    pr = approval.get("approved_pr") if approval else None
    return f"{where} {sha[:7]}" + (f" PR #{pr}" if isinstance(pr, int) and not isinstance(pr, bool) else "")


def static_details(plan: dict[str, Any]) -> str:
    """The plan's changes as a short markdown list, for the Web UI."""
    changes = plan.get("changes")
    changes = changes if isinstance(changes, list) else []
    lines = [f"**{one_line(plan.get('module'), 80)}** at `{one_line(plan.get('source_sha'), 64)}`, "
             f"{len(changes)} change{'' if len(changes) == 1 else 's'}:"]
    for change in changes[:MAX_DETAIL_CHANGES]:
        if isinstance(change, dict):
            action, target = one_line(change.get("action"), 20), one_line(change.get("target"), 120)
            summary = one_line(change.get("summary") or "", 160)
            lines.append(f"- `{action}` {target}" + (f": {summary}" if summary else ""))
        else:
            lines.append("- (not a change object)")
    if len(changes) > MAX_DETAIL_CHANGES:
        lines.append(f"- ... and {len(changes) - MAX_DETAIL_CHANGES} more")
    return "\n".join(lines)


def _started_new(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether the start created the workflow (False: it attached to the one running)."""
    response = getattr(handle, "_start_workflow_response", None)
    return bool(getattr(response, "started", True))


async def run(args: argparse.Namespace, settings: Settings) -> int:
    request = read_request(args.plan_file)
    plan: dict[str, Any] = request["plan"]
    module, sha = plan["module"], plan["source_sha"]
    approval = flag_approval(args)
    if approval is not None:
        request["approval"] = approval
    elif "approval" in request and not isinstance(request["approval"], (dict, type(None))):
        raise usage_error(f"{args.plan_file}: `approval` must be an object")
    key = signing_key(settings)
    digest = digest_of(args.plan_file, plan)
    if request.get("approval") is not None:
        request["approval"] = bind(args.plan_file, request["approval"], digest, key is not None)
        if key is not None:
            request["approval"] = with_signature(key, module, request["approval"])
    check_bounds(args.plan_file, request)
    wid = workflow_id(module, sha, digest)
    host = module_host(settings, module)

    client = await connect_client(settings)
    await require_worker(client, settings)
    handle = await client.start_workflow(
        APPLY_WORKFLOW,
        request,
        id=wid,
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=static_summary(module, host, sha, request.get("approval")),
        static_details=static_details(plan),
    )
    if not _started_new(handle):
        await check_bound(handle, settings, digest, running=False)
        print(f"{wid}: attached to the apply in flight", file=sys.stderr)
        # Started earlier without an approval: deliver this one, through the Update (which
        # takes it while the apply still validates, and answers a repeat of the same one).
        status = await status_of(handle)
        wants = status is None or status.get("phase") in ("validating", "awaiting_approval")
        if request.get("approval") is not None and wants:
            refused = await send_approval(handle, request["approval"])
            if refused is not None:
                return refused
    if args.no_wait:
        print(wid)
        return EXIT_OK
    progress = Progress(wid, sys.stderr, sys.stderr.isatty())
    result = await watch(handle, progress)
    outcome = outcome_of(result, module, host)
    if args.json:
        print_json(outcome)
    else:
        print(summary_line(outcome, sha, host))
    return exit_code(outcome)


def exit_code(outcome: dict[str, Any]) -> int:
    code = outcome.get("exitCode")
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    codes: dict[str, int] = {status: o.exit_code for status, o in OUTCOMES.items()}
    return codes.get(str(outcome.get("status")), EXIT_UNREACHABLE)


def summary_line(outcome: dict[str, Any], sha: str, host: str | None = None) -> str:
    """`<status> <module>@<host> <sha7> exit <code>[: <error>]`; the host from module.yaml
    when the apply ended before it named one."""
    module, host = outcome.get("module") or "?", outcome.get("host") or host
    where = f"{module}@{host}" if host else str(module)
    line = f"{outcome.get('status')} {where} {sha[:7]} exit {exit_code(outcome)}"
    error = outcome.get("error")
    line = f"{line}: {one_line(error)}" if error else line
    return line + rollback_clause(outcome.get("rollback"))


def rollback_clause(rollback: Any) -> str:
    """What the automatic rollback did, on the same line: CI logs show only that line,
    and a rollback that failed too is what a person must act on."""
    image = rollback.get("image") if isinstance(rollback, dict) else None
    if not isinstance(image, dict):
        return ""
    outcome, image_id = image.get("outcome"), one_line(image.get("image_id") or "?", 80)
    why = f": {one_line(image['error'], 200)}" if image.get("error") else ""
    if outcome == "failed":
        return f"; ROLLBACK FAILED{why}: check the service on the host"
    if outcome == "unhealthy":
        return f"; ROLLBACK to {image_id} done but NOT healthy{why}: check the service on the host"
    if outcome == "restored":
        return f"; rolled back to {image_id}, healthy"
    if outcome == "skipped":
        return f"; no image rollback{why}"
    return ""
