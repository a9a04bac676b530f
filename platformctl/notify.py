"""Notifications: one JSON object POSTed to `PLATFORM_NOTIFY_URL` per event a person should see.

Sending never fails an apply: a refused, slow (over 5 s) or unreachable
endpoint costs one WARNING line. The URL may carry a token (webhook URLs
usually do), so only its scheme and host are ever logged; redirects are not
followed, so the body goes nowhere but the configured host.

Posts run on SENDERS threads of their own, and a notification finding them all
busy is dropped: urlopen's timeout bounds each read, not the request, so an
endpoint answering a byte at a time keeps its thread past the deadline, and on
the event loop's shared pool such threads starved the DNS lookups of SSH
connects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from platformctl.models import RedactedText
from platformctl.redact import redact

log = logging.getLogger("platform.notify")

TIMEOUT_S = 5.0
ENV = "PLATFORM_NOTIFY_URL"
SENDERS = 2
_senders = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="notify")
_free = threading.BoundedSemaphore(SENDERS)  # released by a post's thread when it ends


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
    # `<workflow run id>/<event>`, also the Idempotency-Key header: one per event of a run,
    # so a receiver can drop the repeat a crash between the POST and its record may send.
    idempotency_key: str


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
    if parts.username is not None or parts.password is not None:
        # urllib sends no such credentials; its error for them quoted the password.
        raise ValueError(f"{ENV} must not hold a user or password: put the token in its path or query")
    return url


def shown(url: str) -> str:
    """What may be logged of a URL: scheme and host, never its path, query or credentials."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx then fails as an HTTPError


class _Busy(Exception):
    pass


def _post(url: str, body: bytes, key: str) -> None:
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
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
        if not _free.acquire(blocking=False):
            raise _Busy(f"the endpoint still holds {SENDERS} earlier notifications: this one is dropped")
        post = _senders.submit(_post, url, body, notification.idempotency_key)
        post.add_done_callback(lambda _: _free.release())
        # At the deadline the post is left to its thread: `_free` counts it until it ends.
        await asyncio.wait_for(asyncio.wrap_future(post), TIMEOUT_S)
        return True
    except Exception as e:
        if isinstance(e, TimeoutError):
            reason = f"no answer within {TIMEOUT_S:g} s"
        elif isinstance(e, (urllib.error.URLError, ValueError, _Busy)):
            reason = f"{type(e).__name__}: {e}"
        else:  # its text may quote the URL in a form not recognised below
            reason = type(e).__name__
        if url:
            reason = reason.replace(url, shown(url))
        log.warning(
            "notification %s for workflow %s not delivered to %s: %s",
            notification.event, notification.workflow_id, shown(url) if url else ENV, redact(reason),
        )
        return False
