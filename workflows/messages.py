"""Input and messages arrive raw (the workflows are dynamic): a payload of any
shape, or any number of them, is read here and never fails a workflow task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from platformctl.models import ApplyInput, Rejection, brief_errors
    from platformctl.payload import UnreadablePayload, decode_json
    from workflows.steps import Stop


def first_json(args: Sequence[RawValue], default: Any) -> Any:
    """The first argument of a message, decoded; anything unreadable reads as `default`."""
    try:
        value = decode_json(args[0].payload) if args else None
    except UnreadablePayload:
        return default
    return default if value is None else value


def rejection(value: Any) -> Rejection:
    # A reject whose payload does not parse still rejects.
    try:
        return Rejection.model_validate(value)
    except ValidationError:
        return Rejection(reason="(reject payload was not a valid object)")


def stop_if_rejected(rejected: Rejection | None) -> None:
    """A Stop, `rejected`, naming who and why, once a reject has arrived."""
    if rejected is not None:
        who = f" by {rejected.rejected_by}" if rejected.rejected_by else ""
        raise Stop("rejected", f"rejected{who}: {rejected.reason or 'no reason given'}")


def apply_input(args: Sequence[RawValue]) -> tuple[ApplyInput, dict[str, Any]]:
    """An apply's start input within the contract's bounds, and its plan exactly as
    received (what its plan_digest is computed from); a Stop, `blocked`, for anything else."""
    if len(args) != 1:
        raise Stop("blocked", f"invalid apply input: expected one JSON object, got {len(args)} arguments")
    try:
        request = decode_json(args[0].payload)
    except UnreadablePayload as e:
        raise Stop("blocked", f"invalid apply input: {e}") from None
    try:
        inp = ApplyInput.model_validate(request)
    except ValidationError as e:
        raise Stop("blocked", f"invalid apply input: {brief_errors(e)}") from None
    return inp, request["plan"]  # a dict: ApplyInput parsed it as a plan object


def module_named(args: Sequence[RawValue]) -> str | None:
    """The module an input that is not an apply's names, if it names one, for its result."""
    value = first_json(args, default=None) if len(args) == 1 else None
    plan = value.get("plan") if isinstance(value, dict) else None
    module = plan.get("module") if isinstance(plan, dict) else None
    return module[:64] if isinstance(module, str) else None
