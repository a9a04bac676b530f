"""A local notification endpoint: an http.server on 127.0.0.1 in a thread."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

TOKEN = "hooktoken-5f2c9a7e"


@dataclass
class Sink:
    port: int
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)  # each POST's Idempotency-Key header
    status: int = 204
    delay_s: float = 0.0
    location: str | None = None  # answer with this Location (and a 3xx status)

    @property
    def url(self) -> str:
        """Webhook URLs carry their secret in the path or query: this one does both."""
        return f"http://127.0.0.1:{self.port}/hooks/{TOKEN}?key={TOKEN}"

    def events(self) -> list[str]:
        return [body["event"] for _, body in self.received]


@pytest.fixture
def sink() -> Iterator[Sink]:
    state: list[Sink] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            me = state[0]
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            me.received.append((self.path, body))
            me.keys.append(self.headers["Idempotency-Key"])
            time.sleep(me.delay_s)
            self.send_response(me.status)
            if me.location:
                self.send_header("Location", me.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.append(Sink(port=server.server_address[1]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state[0]
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
