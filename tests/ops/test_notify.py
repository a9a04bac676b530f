"""Notifications: one JSON POST per event, redacted, bounded in time, never failing the caller."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from activities import build_activities
from activities.records import NotifyInput, Records
from platformctl import notify
from platformctl.notify import Notification, notify_url, send
from tests.activities.state_helpers import StubDeps, run, settings_for
from tests.ops.conftest import TOKEN, free_port

SECRET = "hunter2-notify-secret"


def note(**over) -> Notification:
    fields = {
        "event": "apply_failed", "module": "honcho-redis", "host": "rs2000", "status": "remote_failed",
        "exitCode": 4, "workflow_id": "apply-1", "error": f"compose up failed: password={SECRET}",
        "at": "2025-01-01T00:00:00+00:00", "idempotency_key": "0190-run/apply_failed",
    }
    return Notification(**{**fields, **over})


def logged(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


async def test_posts_one_redacted_json_object(sink, monkeypatch):
    monkeypatch.setenv("PLATFORM_NOTIFY_URL", sink.url)
    assert await send(note()) is True
    ((path, body),) = sink.received
    assert path == f"/hooks/{TOKEN}?key={TOKEN}"
    assert body == {
        "event": "apply_failed", "module": "honcho-redis", "host": "rs2000", "status": "remote_failed",
        "exitCode": 4, "workflow_id": "apply-1", "error": "compose up failed: password=[REDACTED]",
        "at": "2025-01-01T00:00:00+00:00", "deadline": None, "idempotency_key": "0190-run/apply_failed",
    }
    assert sink.keys == ["0190-run/apply_failed"]  # also as the Idempotency-Key header


async def test_unset_url_sends_nothing(sink, monkeypatch, caplog):
    monkeypatch.delenv("PLATFORM_NOTIFY_URL", raising=False)
    assert await send(note()) is False
    assert sink.received == [] and not caplog.records


@pytest.mark.parametrize("status, location", [(500, None), (302, "/elsewhere")], ids=["refused", "redirect"])
async def test_a_refused_post_is_one_warning_without_the_url_secret(sink, monkeypatch, caplog, status, location):
    sink.status, sink.location = status, location
    monkeypatch.setenv("PLATFORM_NOTIFY_URL", sink.url)
    assert await send(note()) is False
    assert len(sink.received) == 1  # a redirect is not followed
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and f"HTTP Error {status}" in record.getMessage()
    assert f"http://127.0.0.1:{sink.port}" in record.getMessage()
    assert TOKEN not in logged(caplog) and SECRET not in logged(caplog)


async def test_an_unreachable_endpoint_is_one_warning(monkeypatch, caplog):
    monkeypatch.setenv("PLATFORM_NOTIFY_URL", f"http://127.0.0.1:{free_port()}/hooks/{TOKEN}")
    assert await send(note()) is False
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "not delivered" in record.getMessage()
    assert TOKEN not in logged(caplog)


async def test_a_slow_endpoint_is_given_up_on(sink, monkeypatch, caplog):
    monkeypatch.setattr(notify, "TIMEOUT_S", 0.3)
    sink.delay_s = 3
    monkeypatch.setenv("PLATFORM_NOTIFY_URL", sink.url)
    started = time.monotonic()
    assert await send(note()) is False
    assert time.monotonic() - started < 1.5
    assert "no answer within 0.3 s" in logged(caplog) and TOKEN not in logged(caplog)


@pytest.mark.parametrize("url", ["file:///etc/passwd", f"ftp://127.0.0.1/{TOKEN}", "http:///nohost", "localhost:80"])
async def test_only_http_urls_are_used(monkeypatch, caplog, url):
    with pytest.raises(ValueError):
        notify_url({"PLATFORM_NOTIFY_URL": url})
    monkeypatch.setenv("PLATFORM_NOTIFY_URL", url)
    assert await send(note()) is False
    assert "must be an http:// or https:// URL" in logged(caplog) and TOKEN not in logged(caplog)


async def test_notify_activity_posts_the_approval_event(sink, monkeypatch, tmp_path):
    monkeypatch.setenv("PLATFORM_NOTIFY_URL", sink.url)
    activity = Records(StubDeps(settings=settings_for(tmp_path)))  # type: ignore[arg-type]
    inp = NotifyInput(
        event="awaiting_approval", module="honcho-redis", host="rs2000", workflow_id="apply-9",
        deadline="2025-01-02T00:00:00+00:00",
    )
    assert await run(activity.notify, inp) is True
    ((_, body),) = sink.received
    assert body["event"] == "awaiting_approval" and body["workflow_id"] == "apply-9"
    assert body["deadline"] == "2025-01-02T00:00:00+00:00" and body["status"] is None and body["at"]
    assert body["idempotency_key"].endswith("/awaiting_approval")


def test_notify_is_registered(tmp_path):
    deps = StubDeps(settings=settings_for(tmp_path))
    names = [fn.__name__ for fn in build_activities(deps)]  # type: ignore[arg-type]
    assert "notify" in names


def test_a_url_with_a_user_or_password_is_refused_without_logging_it(caplog):
    url = "https://hook:S3cretHookPass@hooks.example.com/x"
    with pytest.raises(ValueError, match="must not hold a user or password") as refused:
        notify_url({"PLATFORM_NOTIFY_URL": url})
    assert "S3cretHookPass" not in str(refused.value)


@pytest.fixture
def drip() -> Iterator[str]:
    """An endpoint that answers one byte every 0.1 s for 3 s: no read ever times out."""

    held: list[socket.socket] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            held.append(self.request)
            self.request.recv(65536)
            with contextlib.suppress(OSError):
                for byte in b"HTTP/1.1 204 No Content\r\n"[:30]:
                    self.request.sendall(bytes([byte]))
                    time.sleep(0.1)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/{TOKEN}"
    server.shutdown()
    server.server_close()
    for conn in held:  # the posts it holds end at once
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
    # Their threads are free again before the next test sends (else its notifications are dropped).
    freed = [notify._free.acquire(timeout=5) for _ in range(notify.SENDERS)]
    for _ in range(sum(freed)):
        notify._free.release()
    assert all(freed), "a post to the dripping endpoint still holds its sender"


async def test_an_endpoint_that_drips_holds_only_the_senders_and_never_the_loops_pool(drip, monkeypatch, caplog):
    """Posts it holds past their deadline stay on their own threads: the event loop's
    pool still resolves names (asyncssh looks host names up there) at once."""
    monkeypatch.setattr(notify, "TIMEOUT_S", 0.3)
    monkeypatch.setenv("PLATFORM_NOTIFY_URL", drip)
    sent = await asyncio.gather(*(send(note(workflow_id=f"apply-{i}")) for i in range(8)))
    assert sent == [False] * 8
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    await asyncio.wait_for(loop.getaddrinfo("localhost", 22), 2)
    assert time.monotonic() - started < 1
    dropped = [r for r in caplog.records if "earlier notifications: this one is dropped" in r.getMessage()]
    assert len(dropped) == 8 - notify.SENDERS
    assert TOKEN not in logged(caplog)
