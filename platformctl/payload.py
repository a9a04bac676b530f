"""Decode a raw workflow or signal payload within the contract's bounds.

The workflows take their input and messages as raw payloads and decode them
here, where a failure is an ordinary error that ends the apply `blocked`;
the data converter would instead fail the workflow task, again and again.
"""

from __future__ import annotations

import json
from typing import Any

from temporalio.api.common.v1 import Payload

from platformctl.models import MAX_INPUT_BYTES, MAX_INPUT_DEPTH


class UnreadablePayload(ValueError):
    pass


def _depth(value: Any) -> int:
    """How deep `value` nests. Raises UnreadablePayload on a string that is not
    Unicode text: JSON lets "\\ud800" (half a surrogate pair) through, and such a
    string cannot be encoded again, so the first step result or lock request
    holding it would fail its workflow task, again and again."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((k, depth) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise UnreadablePayload("payload holds a string that is not valid Unicode (a lone surrogate)") from None
    return deepest


def decode_json(payload: Payload) -> Any:
    encoding = payload.metadata.get("encoding", b"")
    if encoding == b"binary/null":
        return None
    if encoding != b"json/plain":
        raise UnreadablePayload(f"payload must be JSON, got encoding {encoding[:40]!r}")
    if len(payload.data) > MAX_INPUT_BYTES:
        raise UnreadablePayload(f"payload is {len(payload.data)} bytes, over the {MAX_INPUT_BYTES}-byte bound")
    try:
        value = json.loads(payload.data)
    except RecursionError:
        raise UnreadablePayload(f"payload nests deeper than {MAX_INPUT_DEPTH} levels") from None
    except ValueError as e:
        raise UnreadablePayload(f"payload is not valid JSON: {str(e)[:200]}") from None
    check_shape(value)
    return value


def check_shape(value: Any) -> None:
    """Raise UnreadablePayload when `value` nests past the bound or holds text that is not Unicode."""
    if _depth(value) > MAX_INPUT_DEPTH:
        raise UnreadablePayload(f"payload nests deeper than {MAX_INPUT_DEPTH} levels")
