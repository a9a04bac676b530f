"""`platform-apply reject WORKFLOW_ID --reason TEXT`: the `reject` signal.

Honoured at any point before compose up starts; the apply then ends
`rejected` (exit code 5 for whoever waits on it).
"""

from __future__ import annotations

import argparse
from typing import Any

from temporalio.service import RPCError, RPCStatusCode

from platformctl.cli.common import EXIT_OK, connect_client
from platformctl.cli.plan_binding import not_waiting
from platformctl.config import Settings


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "reject",
        help="reject an apply (the reject signal)",
        description="Send the `reject` signal to WORKFLOW_ID; exit 0 once delivered, 5 when it has ended, "
        "66 when no workflow has that id.",
    )
    p.add_argument("workflow_id", metavar="WORKFLOW_ID")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded in the result and audit line)")
    p.add_argument("--by", metavar="NAME", help="who rejects (recorded in the audit line)")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    rejection = {"reason": args.reason, "rejected_by": args.by or ""}
    client = await connect_client(settings)
    try:
        await client.get_workflow_handle(args.workflow_id).signal("reject", rejection)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise await not_waiting(client.get_workflow_handle(args.workflow_id), settings, "reject") from None
        raise
    print(f"rejected {args.workflow_id}")
    return EXIT_OK
