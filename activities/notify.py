"""The `notify` activity: tell a person an apply needs them (approval awaited or about to expire).

Apply outcomes and rollbacks are notified by persist_state and rollback
themselves; this is for the workflow's own moments. Delivery is best effort:
the activity never fails on a refused or unreachable endpoint.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict
from temporalio import activity

from activities.base import StepActivities, step
from platformctl.notify import Notification, send
from platformctl.state import now_iso


class NotifyInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event: Literal["awaiting_approval", "approval_expiring"]
    module: str
    host: str | None = None
    workflow_id: str
    deadline: str | None = None  # ISO-8601 UTC: when the approval wait ends


class Notify(StepActivities):
    @activity.defn(name="notify")
    @step
    async def notify(self, inp: NotifyInput) -> bool:
        """True when the endpoint accepted it; False when none is configured or it failed."""
        return await send(
            Notification(
                event=inp.event, module=inp.module, host=inp.host, workflow_id=inp.workflow_id,
                deadline=inp.deadline, at=now_iso(),
                idempotency_key=f"{activity.info().workflow_run_id}/{inp.event}",
            )
        )
