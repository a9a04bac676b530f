"""`platform-apply status [MODULE]`: per module, what runs and what is in flight.

Reads the module state workflows (the record in Temporal every worker shares)
and the running applies' `status` query, one line per module.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from platformctl.cli.common import EXIT_OK, connect_client, one_line, print_json
from platformctl.config import Settings
from platformctl.models import ModuleState
from platformctl.module_state import module_state_id, read_state

QUERY_TIMEOUT = timedelta(seconds=5)


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "status",
        help="last applied SHA, PR, outcome and any apply in flight, per module",
        description="One line per module with recorded state (or the one named).",
    )
    p.add_argument("module", nargs="?", help="only this module")
    p.add_argument("--json", action="store_true", help="print JSON instead")
    p.set_defaults(run=run)


def state_line(state: ModuleState, in_flight: list[dict[str, Any]]) -> str:
    """One module's line. Its parts come from workflow state, which anyone with
    namespace access can write (a signal's `approved_by`), so it is shown plain."""
    last = state.last_applied
    line = f"{state.module}: "
    if last is not None:
        line += f"{last.sha[:12]} PR #{last.pr} applied {last.at} by {last.approved_by or '?'} ({last.workflow_id})"
    else:
        line += "never applied"
    if state.last_failure is not None:
        failed = state.last_failure
        line += f"; last failure {failed.status} of {(failed.sha or '?')[:12]} at {failed.at}"
        image = failed.rollback.image if failed.rollback else None
        if image is not None:
            line += f" (rollback {image.outcome}{' to ' + image.image_id[:19] if image.image_id else ''})"
    if state.pinned is not None:
        pin = state.pinned
        line += f"; PINNED by rollback to {(pin.sha or '?')[:12]} by {pin.by} at {pin.at} (re-apply skips it)"
    if in_flight:
        line += "; in flight: " + ", ".join(f"{a['workflow_id']} ({a.get('phase')})" for a in in_flight)
    return one_line(line, limit=None)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    client = await connect_client(settings)
    queue = settings.task_queue.replace("'", "")
    prefix = module_state_id(settings.task_queue, "")
    # Every apply in flight, oldest first: one may apply while the next waits for approval.
    flying: dict[str, list[dict[str, Any]]] = {}
    running = f"WorkflowType = 'ApplyWorkflow' AND ExecutionStatus = 'Running' AND TaskQueue = '{queue}'"
    applies = sorted([wf async for wf in client.list_workflows(running)], key=lambda wf: wf.start_time)
    for wf in applies:
        try:
            st = await client.get_workflow_handle(wf.id, run_id=wf.run_id).query("status", rpc_timeout=QUERY_TIMEOUT)
        except Exception:  # closed in between, or no worker to answer
            continue
        if isinstance(st, dict) and st.get("module"):
            flying.setdefault(str(st["module"]), []).append({"workflow_id": wf.id, "phase": st.get("phase")})
    if args.module:
        modules = [args.module]
    else:
        query = f"WorkflowType = 'ModuleStateWorkflow' AND ExecutionStatus = 'Running' AND TaskQueue = '{queue}'"
        recorded = {wf.id[len(prefix):] async for wf in client.list_workflows(query) if wf.id.startswith(prefix)}
        modules = sorted(recorded | set(flying))  # a first apply in flight has no state yet
    rows: list[tuple[str, ModuleState | None, str]] = []
    for module in modules:
        try:
            state = await read_state(client, settings.task_queue, module, QUERY_TIMEOUT)
        except Exception as e:
            rows.append((module, None, one_line(f"{module}: no recorded state ({one_line(e, 80)})", limit=None)))
            continue
        state = state or ModuleState(module=module)
        rows.append((module, state, state_line(state, flying.get(module, []))))
    if args.json:
        print_json([
            {"module": m, "state": s.model_dump(mode="json") if s else None, "in_flight": flying.get(m, [])}
            for m, s, _ in rows
        ])
    else:
        for _, _, line in rows:
            print(line)  # each shown plain by state_line or one_line
        if not rows:
            print("no module has recorded state yet")
    return EXIT_OK
