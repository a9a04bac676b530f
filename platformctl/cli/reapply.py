"""`platform-apply reapply [MODULE...]` and `platform-apply schedule`: ReapplyWorkflow by hand or on a Schedule."""

from __future__ import annotations

import argparse
import uuid
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    WorkflowFailureError,
)
from temporalio.exceptions import ApplicationError

from platformctl.cli.common import EXIT_OK, EXIT_UNREACHABLE, connect_client, print_json
from platformctl.config import Settings

EXIT_FAILED = 4  # some module failed: like remote_failed


def add_parser(commands: Any) -> None:
    p = commands.add_parser("reapply", help="re-apply modules' last approved state now")
    p.add_argument("modules", nargs="*", help="modules (default: every module with recorded state)")
    p.add_argument("--max-parallel", type=int, default=4)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_reapply)
    s = commands.add_parser(
        "schedule", help="create the Schedule that re-applies periodically (overlap skip, pause on failure)"
    )
    when = s.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=int, metavar="MINUTES", help="interval in minutes")
    when.add_argument("--cron", metavar="EXPR", help="cron expression, e.g. '0 * * * *'")
    s.add_argument("--id", default="platform-reapply", help="schedule id (default: platform-reapply)")
    s.add_argument("--max-parallel", type=int, default=4)
    s.add_argument("modules", nargs="*")
    s.set_defaults(run=run_schedule)


def _request(args: argparse.Namespace) -> dict[str, Any]:
    return {"modules": args.modules or None, "max_parallel": args.max_parallel}


async def run_reapply(args: argparse.Namespace, settings: Settings) -> int:
    client = await connect_client(settings)
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
            print(f"re-apply {handle.id} ended without results: {cause}")
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
    spec = (
        ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(minutes=args.every))])
        if args.every
        else ScheduleSpec(cron_expressions=[args.cron])
    )
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
    )
    print(f"schedule {args.id} created: ReapplyWorkflow on {settings.task_queue}, overlap skip, pause on failure")
    return EXIT_OK
