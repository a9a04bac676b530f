"""`platform-apply locks`: who holds each compose project's lock, and who waits.

Lists the running workflows under a lock's id (visibility, so a lock taken a
moment ago may show a second later) and asks each lock its `state`. Anything
else under such an id (another type, or a lock on a queue this platform does
not poll) is a squatter: every apply of that project ends `blocked` until an
operator ends it, and the line says so.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from platformctl.cli.common import EXIT_OK, connect_client, one_line
from platformctl.config import Settings
from platformctl.models import PROJECT_LOCK_WORKFLOW

LOCK_PREFIX = "platform-lock:"
LOCKS_QUERY = f"WorkflowId STARTS_WITH '{LOCK_PREFIX}' AND ExecutionStatus = 'Running'"
QUERY_TIMEOUT = timedelta(seconds=5)


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "locks",
        help="list the held compose-project locks",
        description="One line per running lock: `<host>/<project> held by <workflow> (waiting: ...)`.",
    )
    p.set_defaults(run=run)


def lock_line(workflow_id: str, state: dict[str, Any]) -> str:
    """One lock's line, shown plain: a lock's state is whatever its workflow answers."""
    name = state.get("lock") or workflow_id.removeprefix(LOCK_PREFIX).replace(":", "/", 1)
    line = f"{name} held by {state.get('holder') or '?'}"
    waiting = [str(w) for w in state.get("waiting") or []]
    if waiting:
        line += f" (waiting: {', '.join(waiting)})"
    if state.get("released"):
        line += " (released, handing on)"
    return one_line(line, limit=None)


def squatter_line(workflow_id: str, workflow_type: str, task_queue: str) -> str:
    return one_line(
        f"{workflow_id}: SQUATTED by {workflow_type} on task queue {task_queue!r}: applies of that project "
        f"end blocked until it is ended (temporal workflow terminate --workflow-id {workflow_id})",
        limit=None,
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    client = await connect_client(settings)
    lines = []
    async for execution in client.list_workflows(LOCKS_QUERY):
        if execution.workflow_type != PROJECT_LOCK_WORKFLOW or execution.task_queue != settings.task_queue:
            lines.append(squatter_line(execution.id, execution.workflow_type, execution.task_queue))
            continue
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        try:
            state = await handle.query("state", rpc_timeout=QUERY_TIMEOUT)
        except Exception as e:  # closed in between, or no worker to answer: say so, go on
            lines.append(one_line(f"{execution.id}: state unavailable ({one_line(e, 120)})", limit=None))
            continue
        lines.append(lock_line(execution.id, state if isinstance(state, dict) else {}))
    for line in sorted(lines) or ["no locks held"]:
        print(line)
    return EXIT_OK
