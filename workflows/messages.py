"""Messages arrive raw (the workflows' signals and updates are dynamic): a payload of
any shape, or any number of them, is read here and never fails a workflow task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from platformctl.models import Rejection
    from platformctl.payload import UnreadablePayload, decode_json


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
