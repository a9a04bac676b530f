"""`platform-apply rollback MODULE --by NAME --reason TEXT`: start a RollbackWorkflow and wait.

The workflow puts MODULE back on the images of the successful apply before
the last one (or of `--to-sha`). Every rollback is a decision of its own: the
workflow id is `rollback-<module>-<12 hex>`, new each time, never attached to.

With PLATFORM_APPROVAL_KEY_FILE set, the request is signed like an approval
(approved_sha: the SHA rolled back to, approved_pr: null), so the CLI must
name that SHA: without `--to-sha` it reads the module state's
`previous_applied` (and says which SHA it signs), and exits 3 (blocked) when
there is none. A signed request expires in an hour unless `--expires-at`
says otherwise.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError

from platformctl.cli.apply import exit_code as apply_exit_code
from platformctl.cli.apply import module_host
from platformctl.cli.common import (
    EXIT_OK,
    EXIT_UNREACHABLE,
    CliError,
    connect_client,
    full_sha,
    iso_time,
    module_id,
    non_blank,
    one_line,
    outcome_of,
    print_json,
    require_worker,
    signing_key,
    with_signature,
)
from platformctl.cli.progress import Progress, watch
from platformctl.config import Settings
from platformctl.module_state import read_state

ROLLBACK_WORKFLOW = "RollbackWorkflow"
EXIT_ROLLED_BACK = 9  # the host changed, like `applied`
EXIT_NOTHING_TO_ROLL_BACK = 3  # no earlier apply recorded to sign for: `blocked`, as the workflow ends it
QUERY_TIMEOUT = timedelta(seconds=5)
SHORT_IMAGE_ID = len("sha256:") + 12  # docker's short form, after the algorithm
SIGNED_FOR = timedelta(hours=1)  # a signed request's default expiry: past the longest wait for the lock


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "rollback",
        help="put a module back on the images of its successful apply before the last one",
        description="Start RollbackWorkflow for MODULE and wait for the result: exit 9 rolled back, "
        "0 already on those images or dry run, 3 blocked (e.g. no earlier apply recorded), "
        "4 remote failure or unhealthy, 5 approval mismatch, rejected or cancelled. Signed when "
        "PLATFORM_APPROVAL_KEY_FILE is set (then, without --to-sha, the SHA is read from the "
        "module state; none recorded: exit 3).",
    )
    p.add_argument("module", metavar="MODULE", type=module_id, help="the module to roll back")
    p.add_argument("--by", required=True, metavar="NAME", type=non_blank, help="who decides (recorded)")
    p.add_argument("--reason", required=True, metavar="TEXT", type=non_blank, help="why (recorded, shown in the UI)")
    p.add_argument(
        "--to-sha", metavar="SHA", type=full_sha,
        help="the applied SHA whose images to go back to (default: the successful apply before the last one)",
    )
    p.add_argument(
        "--expires-at", metavar="T", type=iso_time,
        help="ISO-8601 time the request ends (signed; with a signing key, default: in one hour)",
    )
    p.add_argument("--no-wait", action="store_true", help="exit 0 once the rollback started; print its workflow id")
    p.add_argument("--json", action="store_true", help="print the rollback's result JSON instead of one line")
    p.set_defaults(run=run)


def workflow_id(module: str) -> str:
    return f"rollback-{module}-{uuid.uuid4().hex[:12]}"


def static_summary(module: str, host: str | None, to_sha: str | None, by: str) -> str:
    where = f"{module}@{host}" if host else module
    return f"rollback {where} to {to_sha[:7] if to_sha else 'previous'} by {by}"


def request_expiry(given: str | None, key: bytes | None, now: datetime) -> str | None:
    """--expires-at, or with a key SIGNED_FOR from now: a rollback is decided now, and its
    signature stays readable in history, so it must not be good for a replay next month."""
    if given is not None or key is None:
        return given
    return (now + SIGNED_FOR).strftime("%Y-%m-%dT%H:%M:%SZ")


def rollback_input(
    module: str, to_sha: str | None, by: str, reason: str, expires_at: str | None, key: bytes | None
) -> dict[str, Any]:
    """The workflow's input; with a key, signed like an approval of `to_sha` (no PR, not destructive)."""
    signature = None
    if key is not None:
        assert to_sha is not None, "a signed rollback names its SHA"
        approval = {
            "approved_sha": to_sha,
            "approved_pr": None,
            "approved_by": by,
            "allow_destructive": False,
            "expires_at": expires_at,
        }
        signature = with_signature(key, module, approval)["signature"]
    return {
        "module": module,
        "to_sha": to_sha,
        "approved_by": by,
        "reason": reason,
        "expires_at": expires_at,
        "signature": signature,
    }


async def previous_sha(client: Client, settings: Settings, module: str) -> str:
    """The SHA of the module's successful apply before the last one, from its module state."""
    try:
        state = await read_state(client, settings.task_queue, module, QUERY_TIMEOUT)
    except RPCError as e:
        raise CliError(EXIT_UNREACHABLE, f"cannot read the module state of {module}: {one_line(e.message)}") from None
    previous = state.previous_applied if state is not None else None
    if previous is None:
        raise CliError(
            EXIT_NOTHING_TO_ROLL_BACK,
            f"nothing to roll back to: no successful apply of {module} before the last one is recorded",
        )
    return previous.sha


async def run(args: argparse.Namespace, settings: Settings) -> int:
    module: str = args.module
    to_sha: str | None = args.to_sha
    key = signing_key(settings)
    host = module_host(settings, module)

    client = await connect_client(settings)
    await require_worker(client, settings)
    expires_at = request_expiry(args.expires_at, key, datetime.now(UTC))
    if key is not None and to_sha is None:
        to_sha = await previous_sha(client, settings, module)
        # Anyone with namespace access can write the module state: show what is about to be signed.
        print(f"signing a rollback of {module} to {to_sha}, the module state's apply before the last one, "
              f"valid until {expires_at}", file=sys.stderr)
    request = rollback_input(module, to_sha, args.by, args.reason, expires_at, key)
    wid = workflow_id(module)
    handle = await client.start_workflow(
        ROLLBACK_WORKFLOW,
        request,
        id=wid,
        task_queue=settings.task_queue,
        static_summary=static_summary(module, host, to_sha, args.by),
        static_details=args.reason,
    )
    if args.no_wait:
        print(wid)
        return EXIT_OK
    progress = Progress(wid, sys.stderr, sys.stderr.isatty())
    result = await watch(handle, progress)
    outcome = outcome_of(result, module, host, noun="rollback")
    if args.json:
        print_json(outcome)
    else:
        print(summary_line(outcome, to_sha, host))
    return exit_code(outcome)


def exit_code(outcome: dict[str, Any]) -> int:
    """The outcome's exitCode; without one, by status (rolled_back 9, the rest as for an apply)."""
    if outcome.get("status") == "rolled_back" and not isinstance(outcome.get("exitCode"), int):
        return EXIT_ROLLED_BACK
    return apply_exit_code(outcome)


def summary_line(outcome: dict[str, Any], to_sha: str | None = None, host: str | None = None) -> str:
    """`<status> <module>@<host> to <sha7|previous> [(image <id>…)] exit <code>[: <error>]`;
    the SHA and host from the request when the rollback ended before it named them."""
    module, host = outcome.get("module") or "?", outcome.get("host") or host
    where = f"{module}@{host}" if host else str(module)
    sha = outcome.get("to_sha") or to_sha
    line = f"{outcome.get('status')} {where} to {str(sha)[:7] if sha else 'previous'}"
    image = outcome.get("image_id")
    if isinstance(image, str) and image:
        line += f" (image {image[:SHORT_IMAGE_ID]}…)" if len(image) > SHORT_IMAGE_ID else f" (image {image})"
    line += f" exit {exit_code(outcome)}"
    error = outcome.get("error")
    return f"{line}: {one_line(error)}" if error else line
