"""`platform-apply reapply [MODULE...]` and `platform-apply schedule`: ReapplyWorkflow by hand or on a Schedule."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    WorkflowFailureError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from platformctl.cli.common import (
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    connect_client,
    one_line,
    print_json,
    require_worker,
)
from platformctl.config import Settings

EXIT_FAILED = 4  # some module failed: like remote_failed
SCHEDULE_MEMO = "platform_apply_schedule"


def _within(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high], else a usage error (exit 64)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


# ReapplyInput's bound: a value past it would start a re-apply that fails at once.
MAX_PARALLEL = _within(1, 64)
MINUTES = _within(1, 10**6)


def add_parser(commands: Any) -> None:
    p = commands.add_parser("reapply", help="re-apply modules' last approved state now")
    p.add_argument("modules", nargs="*", help="modules (default: every module with recorded state)")
    p.add_argument("--max-parallel", type=MAX_PARALLEL, default=4, help="compose projects at once, 1-64 (default 4)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_reapply)
    s = commands.add_parser(
        "schedule", help="create the Schedule that re-applies periodically (overlap skip, pause on failure)"
    )
    when = s.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=MINUTES, metavar="MINUTES", help="interval in minutes")
    when.add_argument("--cron", metavar="EXPR", help="cron expression, e.g. '0 * * * *'")
    s.add_argument("--id", default="platform-reapply", help="schedule id (default: platform-reapply)")
    s.add_argument("--max-parallel", type=MAX_PARALLEL, default=4, help="compose projects at once, 1-64 (default 4)")
    s.add_argument("modules", nargs="*")
    s.set_defaults(run=run_schedule)


def _request(args: argparse.Namespace) -> dict[str, Any]:
    return {"modules": args.modules or None, "max_parallel": args.max_parallel}


async def run_reapply(args: argparse.Namespace, settings: Settings) -> int:
    client = await connect_client(settings)
    await require_worker(client, settings)
    handle = await client.start_workflow(
        "ReapplyWorkflow", _request(args), id=f"reapply-{uuid.uuid4().hex[:12]}", task_queue=settings.task_queue,
        static_summary=f"re-apply {' '.join(args.modules) or 'all modules'}",
    )
    try:
        result = await handle.result()
        code = EXIT_OK
    except WorkflowFailureError as e:
        cause = e.cause
        if not (isinstance(cause, ApplicationError) and cause.type == "ReapplyFailed" and cause.details):
            print(f"re-apply {handle.id} ended without results: {one_line(cause)}", file=sys.stderr)
            return EXIT_UNREACHABLE
        result, code = cause.details[0], EXIT_FAILED
    if args.json:
        print_json(result)
    else:
        for entry in result["results"]:
            drift = " (drift corrected)" if entry.get("drift") else ""
            reason = f": {entry['reason']}" if entry.get("reason") else ""
            print(f"{entry['module']}: {entry['outcome']}{drift}{reason}")
    return code


async def run_schedule(args: argparse.Namespace, settings: Settings) -> int:
    client = await connect_client(settings)
    asked = _schedule_memo(args, settings)
    spec = (
        ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(minutes=args.every))])
        if args.every is not None
        else ScheduleSpec(cron_expressions=[args.cron])
    )
    try:
        await client.create_schedule(
            args.id,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    "ReapplyWorkflow", _request(args), id=f"{args.id}-run", task_queue=settings.task_queue
                ),
                spec=spec,
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, pause_on_failure=True),
                state=ScheduleState(note="re-applies the last approved state of each module"),
            ),
            memo={SCHEDULE_MEMO: asked},
        )
    except ScheduleAlreadyRunningError:
        return await _exists(client, args.id, asked)
    except RPCError as e:
        if e.status != RPCStatusCode.INVALID_ARGUMENT:
            raise
        raise CliError(EXIT_USAGE, f"Temporal refused the schedule: {one_line(e.message)}") from None
    print(f"schedule {args.id} created: {_describe(asked)}, overlap skip, pause on failure")
    return EXIT_OK


def _schedule_memo(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """What this command was asked for, kept in the schedule's memo: the next run of the
    same command compares against it (the server's own copy of a cron is rewritten)."""
    when = {"every_minutes": args.every} if args.every is not None else {"cron": args.cron}
    return {**when, "modules": sorted(args.modules), "max_parallel": args.max_parallel,
            "task_queue": settings.task_queue}


def _describe(memo: dict[str, Any]) -> str:
    when = f"every {memo['every_minutes']} minutes" if "every_minutes" in memo else f"cron {memo.get('cron')!r}"
    modules = " ".join(memo.get("modules") or []) or "all modules"
    return (f"ReapplyWorkflow of {modules} {when}, {memo.get('max_parallel')} at once, "
            f"on task queue {memo.get('task_queue')}")


async def _exists(client: Client, schedule_id: str, asked: dict[str, Any]) -> int:
    """The same schedule again is a success (a paused one stays paused); another is a usage error."""
    desc = await client.get_schedule_handle(schedule_id).describe()
    memo = await desc.memo_value(SCHEDULE_MEMO, default=None)
    if not isinstance(memo, dict):
        raise CliError(
            EXIT_USAGE,
            f"schedule {schedule_id} exists and was not made by `platform-apply schedule`: delete it first "
            f"(temporal schedule delete --schedule-id {schedule_id}) or give another --id",
        )
    if memo != asked:
        raise CliError(
            EXIT_USAGE,
            f"schedule {schedule_id} exists with another spec: {one_line(_describe(memo))}; asked: "
            f"{_describe(asked)}. Delete it first (temporal schedule delete --schedule-id {schedule_id}) "
            "or give another --id",
        )
    state = desc.schedule.state
    if state.paused:
        since = desc.info.last_updated_at or desc.info.created_at
        print(f"schedule {schedule_id} exists already, unchanged: {_describe(asked)}; PAUSED since "
              f"{since.isoformat(timespec='seconds')}: {one_line(state.note or 'no note')} "
              f"(resume: temporal schedule toggle --schedule-id {schedule_id} --unpause --reason ...)")
    else:
        print(f"schedule {schedule_id} exists already, unchanged: {_describe(asked)}")
    return EXIT_OK
