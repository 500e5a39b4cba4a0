"""Real HTTP receivers on loopback for the webhook tests: they record what arrives and answer as told.

Also what a receiver checks: the signature, with the secret the tests configure.
"""

from __future__ import annotations

import base64
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

HANG = "hang"
# The discard port: a delivery to it is made and recorded, and never reaches anyone.
NOWHERE = "http://127.0.0.1:9/hook"
SECRET = "whsec_" + base64.b64encode(b"gateway-webhook-test-secret-0001").decode()


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def header_map(self) -> dict[str, str]:
        return dict(self.headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver

    def process_request(self, request: Any, client_address: Any) -> None:
        # Every TCP connection counts, even one that never sends a full request: a canary must see none.
        with self.receiver.lock:
            self.receiver.connections += 1
        super().process_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        received = Received(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            at=time.time(),
        )
        with receiver.lock:
            receiver.requests.append(received)
            reply = receiver.script.pop(0) if receiver.script else receiver.default
        if reply == HANG:
            receiver.release.wait(timeout=60)
            return
        if isinstance(reply, int):
            reply = Reply(status=reply)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)
        self.close_connection = True

    do_POST = do_GET = do_PUT = do_HEAD = _handle


class Receiver:
    """A threaded HTTP(S) server on 127.0.0.1 that answers from ``script`` in order, then ``default``.

    Script items: a status code, a ``Reply``, or ``HANG`` (accept the request, never answer).
    """

    def __init__(
        self,
        script: list[int | Reply | str] | None = None,
        *,
        default: int | Reply = 200,
        tls: ssl.SSLContext | None = None,
    ):
        self.script = list(script or [])
        self.default = default
        self.tls = tls
        self.requests: list[Received] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    def __enter__(self) -> Receiver:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.receiver = self
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} webhook request(s), got {len(self.requests)}")


def verify(received: Received, secret: str = SECRET) -> dict:
    """The payload, once its signature is verified as a receiver would (Standard Webhooks)."""
    return Webhook(secret).verify(received.body, received.headers)
