"""Notifications: one JSON object POSTed to `PLATFORM_NOTIFY_URL` per event a person should see.

Sending never fails an apply: a refused, slow (over 5 s) or unreachable
endpoint costs one WARNING line. The URL may carry a token (webhook URLs
usually do), so only its scheme and host are ever logged; redirects are not
followed, so the body goes nowhere but the configured host.
"""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from platformctl.models import RedactedText
from platformctl.redact import redact

log = logging.getLogger("platform.notify")

TIMEOUT_S = 5.0
ENV = "PLATFORM_NOTIFY_URL"


class Notification(BaseModel):
    event: str
    module: RedactedText | None = None  # as given: may be garbage from a blocked input
    host: str | None = None
    status: str | None = None
    exitCode: int | None = None
    workflow_id: str | None = None
    error: RedactedText | None = None
    at: str
    deadline: str | None = None  # approval events: when the wait ends


def notify_url(env: Mapping[str, str] | None = None) -> str | None:
    """The configured URL, None when unset; ValueError (naming only its scheme) when unusable."""
    url = (os.environ if env is None else env).get(ENV)
    if not url:
        return None
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"{ENV} has a port that is not a number") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{ENV} must be an http:// or https:// URL with a host, not a {parts.scheme or 'bare'} one")
    return url


def shown(url: str) -> str:
    """What may be logged of a URL: scheme and host, never its path, query or credentials."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx then fails as an HTTPError


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(_NoRedirect).open(request, timeout=TIMEOUT_S) as response:
        response.read()


async def send(notification: Notification) -> bool:
    """POST it if a URL is configured; True when the endpoint accepted it. Never raises."""
    url: str | None = None
    try:
        url = notify_url()
        if url is None:
            return False
        body = notification.model_dump_json().encode()
        # The thread is abandoned at the deadline; urlopen's own timeout ends it soon after.
        await asyncio.wait_for(asyncio.to_thread(_post, url, body), TIMEOUT_S)
        return True
    except Exception as e:
        reason = f"no answer within {TIMEOUT_S:g} s" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
        if url:
            reason = reason.replace(url, shown(url))
        log.warning(
            "notification %s for workflow %s not delivered to %s: %s",
            notification.event, notification.workflow_id, shown(url) if url else ENV, redact(reason),
        )
        return False
