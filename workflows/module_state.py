"""ModuleStateWorkflow: the one record of a module's state, kept in Temporal.

What re-apply, `platform-apply status` and rollback read (the last applied
SHA, its plan and approval, the last failure) must be the same for every
worker on any machine and outlive the namespace's retention of closed
workflows. A running workflow per module, `platform-module:<id>`, is exactly
that: it is never closed, so retention never removes it, and it continues as
new whenever its history grows long. persist_state signals it (with start)
once per outcome that touched a host; the status files stay as the worker's
local record.
"""

from __future__ import annotations

from collections.abc import Sequence

from temporalio import workflow
from temporalio.common import RawValue

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from platformctl.models import ModuleEvent, ModuleState
    from platformctl.module_state import RECORD
    from platformctl.payload import UnreadablePayload, decode_json

CONTINUE_AFTER = 500  # events per run: keeps each history short


# A bad start input (only someone other than persist_state sends one) fails this
# workflow instead of wedging it; persist_state starts it again on the next outcome.
@workflow.defn(name="ModuleStateWorkflow", failure_exception_types=[Exception])
class ModuleStateWorkflow:
    def __init__(self) -> None:
        self._state: ModuleState | None = None
        self._early: list[ModuleEvent] = []  # delivered before run() (signal-with-start)
        self._this_run = 0

    @workflow.run
    async def run(self, state: ModuleState) -> None:
        self._state = state  # what the previous run carried over, or empty
        for event in self._early:
            self._apply(event)
        await workflow.wait_condition(
            lambda: self._this_run >= CONTINUE_AFTER or workflow.info().is_continue_as_new_suggested()
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(self._state)

    @workflow.signal(dynamic=True)
    def on_signal(self, name: str, args: Sequence[RawValue]) -> None:
        if name != RECORD or not args:
            return
        try:
            event = ModuleEvent.model_validate(decode_json(args[0].payload))
        except (UnreadablePayload, ValidationError):
            workflow.logger.warning("ignored a module state record that does not parse")
            return
        if self._state is None:
            self._early.append(event)
        else:
            self._apply(event)

    def _apply(self, event: ModuleEvent) -> None:
        state = self._state
        if state is None or event.module != state.module:
            return
        self._this_run += 1
        update: dict[str, object] = {"events": state.events + 1}
        if event.applied is not None:
            # The apply before the last one is that of another SHA: a re-apply of the
            # same SHA does not push it out. A new apply ends an operator's rollback pin.
            last = state.last_applied
            previous = last if last is not None and last.sha != event.applied.sha else state.previous_applied
            update.update(last_applied=event.applied, previous_applied=previous, last_failure=None, pinned=None)
        if event.failed is not None:
            update["last_failure"] = event.failed
        if event.pinned is not None:
            update["pinned"] = event.pinned
        self._state = state.model_copy(update=update)

    @workflow.query
    def state(self) -> ModuleState | None:
        return self._state
