"""ProjectLockWorkflow: one running instance per host and compose project is its lock.

docker compose is not safe against itself, so two runs of one project must
never overlap, whatever modules they belong to. Workflow ids are unique among
running workflows, so an apply holds the lock by starting
`platform-lock:<host>:<project>` as its child. The child dies with its holder
(ParentClosePolicy.TERMINATE), so a failed or terminated apply cannot leave it
held. An apply that finds it taken joins the lock's queue. On release the lock
returns the queue to its holder, which, once the lock has closed, tells the
first waiter still running, and that one starts the next lock at once (an
apply started before LockRequest.holder_hands_on gets the old behaviour: the
lock tells the waiter itself, sometimes before it has closed). Waiters also
ask again after LOCK_POLLS, then every LOCK_POLL, which covers an enqueue
that reached the lock as it closed and a holder that died without handing on.

Messages arrive raw and are decoded defensively: a payload of any shape is
ignored at worst, never a failed workflow task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from platformctl.models import LockRequest
    from platformctl.payload import UnreadablePayload, decode_json

RELEASE = "release"
ENQUEUE = "enqueue"
LOCK_FREE = "lock_free"  # sent to the waiter whose turn it is, with the rest of the queue
MAX_QUEUE = 1000


def project_lock_id(host: str, project: str) -> str:
    return f"platform-lock:{host}:{project}"


def workflow_ids(args: Sequence[RawValue]) -> list[str]:
    """A list of workflow ids from a raw message; anything else reads as none."""
    try:
        value = decode_json(args[0].payload) if args else None
    except UnreadablePayload:
        return []
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and 0 < len(v) <= 1000][:MAX_QUEUE]


async def hand_on(waiting: list[str]) -> None:
    """Tell the first waiter still running that its turn has come, with the rest of the queue."""
    for i, head in enumerate(waiting):
        try:
            await workflow.get_external_workflow_handle(head).signal(LOCK_FREE, waiting[i + 1 :])
            return
        except FailureError:
            continue  # that waiter has gone: the next in line


# A bad start input (only a caller other than an apply can send one) fails this
# workflow instead of its task: a wedged lock would block its project.
@workflow.defn(name="ProjectLockWorkflow", failure_exception_types=[Exception])
class ProjectLockWorkflow:
    def __init__(self) -> None:
        self._released = False
        self._holder = ""
        self._lock = ""
        self._waiting: list[str] = []

    @workflow.run
    async def run(self, request: LockRequest) -> list[str] | None:
        if workflow.info().parent is None:
            return None  # not started by an apply: it guards nothing, so it holds nothing
        self._holder = request.holder_workflow_id
        self._lock = f"{request.host}/{request.project}"
        self._enqueue(request.queue)
        await workflow.wait_condition(lambda: self._released)
        if request.holder_hands_on:
            # The queue goes back to the holder, which tells the first waiter once this lock
            # has closed: a waiter told before then would find it still open.
            return self._waiting
        await hand_on(self._waiting)
        return None

    def _enqueue(self, ids: list[str]) -> None:
        for wid in ids:
            if wid != self._holder and wid not in self._waiting and len(self._waiting) < MAX_QUEUE:
                self._waiting.append(wid)

    @workflow.signal(dynamic=True)
    def on_signal(self, name: str, args: Sequence[RawValue]) -> None:
        if name == RELEASE:
            self._released = True
        elif name == ENQUEUE:
            self._enqueue(workflow_ids(args))

    @workflow.query
    def state(self) -> dict[str, Any]:
        return {"lock": self._lock, "holder": self._holder, "waiting": list(self._waiting), "released": self._released}
