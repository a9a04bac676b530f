"""Step 2, the approval: given with the start, or awaited (the `approve` Update or
signal, or `reject`) on a durable timer with a notification to a person; then
checked against the plan (SHA, PR, plan digest, expiry, signature).

One rule per channel. An approval given with the start or signalled (no caller
to answer) that does not hold ends the apply as `approval_mismatch`. Through
the Update, a refused approval fails the call with the reason and the apply
keeps waiting: the validator refuses what the input shows (no history), the
handler checks signature and expiry (a local activity: the key never enters
the workflow); after MAX_REFUSED refusals the validator refuses every further one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.checks import Checks
    from activities.records import NotifyInput, Records
    from platformctl.models import ApplyInput, Approval, CheckApprovalInput, Rejection, brief_errors
    from platformctl.outcomes import OUTCOMES
    from platformctl.policy.approval import check_approval
    from workflows.messages import first_json, rejection, stop_if_rejected
    from workflows.steps import Steps, Stop


Notice = Literal["awaiting_approval", "approval_expiring"]
# Refused approvals through the Update answer their caller and leave the apply waiting.
UPDATE_CHECKS_PATCH = "approve-update-checks"
MAX_REFUSED = 20  # each refusal the handler makes is a few events: history stays bounded


class ApprovalGate:
    """One apply's approval: what arrived (`signalled`, `rejection`), what was checked
    (`approval`), and the verdict the approve Update answers with."""

    def __init__(self, steps: Steps) -> None:
        self._steps = steps
        self.signalled: Any = None  # decoded, parsed like a given one once it is used
        self.approval: Approval | None = None
        self.verdict: str | None = None  # "" accepted, else why not: answers the approve Update
        self.rejection: Rejection | None = None
        self.refused = 0  # approvals the Update's handler refused
        self._checked: Any = None  # the approval the Update's handler accepted, as sent
        self._waiting_details = ""

    def rejected(self) -> bool:
        return self.rejection is not None

    def raise_if_rejected(self) -> None:
        stop_if_rejected(self.rejection)

    def on_approve(self, args: Sequence[RawValue]) -> None:
        if self.signalled is None:  # the first one decides
            self.signalled = first_json(args, default={})

    def on_reject(self, args: Sequence[RawValue]) -> None:
        self.rejection = rejection(first_json(args, default={}))

    async def wait(self, sha7: str, timeout_s: int, module: str, host: str | None) -> Any:
        """The approval that arrives within `timeout_s`; a Stop when none does or a reject does."""
        deadline = workflow.now() + timedelta(seconds=timeout_s)
        self._waiting_details = (
            f"Waiting for an approval of `{sha7}` until {deadline:%Y-%m-%d %H:%M} UTC: "
            "the `approve` Update or signal, or `reject`."
        )
        self._steps.enter("awaiting_approval", self._waiting_details)
        arrived = lambda: self.signalled is not None or self.rejection is not None  # noqa: E731
        self._steps.flush()
        try:
            # Tell a person the apply waits for them, and again shortly before the wait ends.
            await self._notify("awaiting_approval", deadline, module, host)
            warn_s = timeout_s - min(3600, timeout_s // 10)
            try:
                await workflow.wait_condition(arrived, timeout=timedelta(seconds=warn_s))
            except TimeoutError:
                await self._notify("approval_expiring", deadline, module, host)
                await workflow.wait_condition(arrived, timeout=deadline - workflow.now())
        except TimeoutError:
            raise Stop("approval_expired", f"no approval arrived within {timeout_s} seconds") from None
        self.raise_if_rejected()
        self._steps.enter("validating", "Checking the approval, the compose path and the host allowlist.")
        return self.signalled

    async def _notify(
        self,
        event: Literal["awaiting_approval", "approval_expiring"],
        deadline: datetime,
        module: str,
        host: str | None,
    ) -> None:
        """Best effort: a notification that cannot be sent never changes the apply."""
        try:
            await self._steps.run(
                Records.notify,
                NotifyInput(
                    event=event, module=module, host=host, workflow_id=workflow.info().workflow_id,
                    deadline=deadline.isoformat(),
                ),
            )  # fmt: skip
        except Stop as e:
            workflow.logger.warning("notification %s not sent: %s", event, e.message)

    async def check(self, inp: ApplyInput, given: Any, digest: str) -> None:
        if self._checked is not None and given is self._checked:
            # The Update's handler checked this very approval.
            self.approval = Approval.model_validate(given)
            self.verdict = ""
            return
        try:
            # Given or signalled, an approval that does not parse approves nothing.
            try:
                self.approval = Approval.model_validate(given)
            except ValidationError as e:
                raise Stop("approval_mismatch", f"not a valid approval: {brief_errors(e)}") from None
            await self._steps.run(
                Checks.check_approval,
                CheckApprovalInput(plan=inp.plan, approval=self.approval, plan_digest=digest),
                local=True,
            )
        except Stop as stop:
            self.verdict = stop.message
            raise
        self.verdict = ""

    async def on_update(
        self, args: Sequence[RawValue], started: Callable[[], tuple[ApplyInput, str] | None]
    ) -> dict[str, Any]:
        """`approve` as an Update: answers once the approval has been checked. `started`:
        the apply's input and plan digest, once it has read them."""
        accepted = {"accepted": True, "workflow_id": workflow.info().workflow_id}
        offered = first_json(args, default={})
        read = started()
        if not workflow.patched(UPDATE_CHECKS_PATCH) or (read is not None and read[0].approval is not None):
            # The start's approval (or a run of the version before): its verdict, from the main flow.
            if self.signalled is None and (read is None or read[0].approval is None):
                self.signalled = offered
            await workflow.wait_condition(lambda: self.verdict is not None)
            if self.verdict:
                raise ApplicationError(self.verdict, type="ApprovalMismatch", non_retryable=True)
            return accepted
        await workflow.wait_condition(lambda: started() is not None)
        inp, digest = started()  # type: ignore[misc]
        if self.signalled is not None:
            # One was taken already (a CI re-run sending it again): that one's verdict.
            await workflow.wait_condition(lambda: self.verdict is not None)
            if self.verdict or offered != self.signalled:
                raise ApplicationError(self.verdict or "the apply already has another approval",
                                       type="ApprovalMismatch", non_retryable=True)
            return accepted
        try:
            approval = Approval.model_validate(offered)
            await self._steps.run(
                Checks.check_approval, CheckApprovalInput(plan=inp.plan, approval=approval, plan_digest=digest),
                local=True,
            )
        except (Stop, ValidationError) as e:
            why = e.message if isinstance(e, Stop) else f"not a valid approval: {brief_errors(e)}"
            self.refused += 1
            self._steps.details(
                f"{self._waiting_details} Approval {self.refused} of at most {MAX_REFUSED} refused: {why}"
            )
            error_type = OUTCOMES[e.status].error_type if isinstance(e, Stop) else None
            raise ApplicationError(why, type=error_type or "ApprovalMismatch", non_retryable=True) from None
        if self.signalled is not None or self._steps.phase not in ("validating", "awaiting_approval"):
            # While this was checked, another Update's approval was taken, or the wait ended.
            raise ApplicationError(f"the apply no longer waits for an approval (phase {self._steps.phase})",
                                   type="ApprovalMismatch", non_retryable=True)
        self.signalled = self._checked = offered
        return accepted

    def validate_update(self, args: Sequence[RawValue], inp: ApplyInput | None, digest: str) -> None:
        if self.refused >= MAX_REFUSED:
            raise ApplicationError(
                f"{MAX_REFUSED} approvals of this apply were refused: no more are taken; reject or cancel it "
                "and start it again", type="ApprovalMismatch", non_retryable=True,
            )
        if inp is None:
            return  # arrived with the start, before the plan was read: checked when the apply gets to it
        offered = first_json(args, default={})
        given = inp.approval if inp.approval is not None else self.signalled
        if given is not None:
            # A CI re-run delivering the same approval again gets that approval's verdict.
            if offered != given:
                raise ApplicationError("the apply already has another approval", non_retryable=True)
            return
        # Before the wait starts (still validating the plan) an approval is taken and used when it does.
        if self._steps.phase not in ("validating", "awaiting_approval"):
            raise ApplicationError(
                f"the apply is not waiting for an approval (phase {self._steps.phase})", non_retryable=True
            )
        try:
            approval = Approval.model_validate(offered)
            check_approval(inp.plan, approval, digest)
        except ValidationError as e:
            raise ApplicationError(
                f"not a valid approval: {brief_errors(e)}", type="ApprovalMismatch", non_retryable=True
            ) from None
        except Exception as e:  # the policy's own refusal, with its reason
            raise ApplicationError(
                str(e), type=getattr(e, "error_type", "ApprovalMismatch"), non_retryable=True
            ) from None
