"""``manage.py webhook_receiver``: a local endpoint that prints the webhooks it receives (development)."""

from __future__ import annotations

import hmac
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from webhooks import signing

MAX_BODY = 10 * 1024 * 1024
# Standard Webhooks' tolerance for a timestamp away from the receiver's clock.
TIMESTAMP_TOLERANCE = 300


def signature_status(*, secret: str | None, headers: Any, body: bytes) -> str:
    """``ok``, ``unsigned``, ``not checked (no secret)`` or what is wrong, as a receiver would decide."""
    sent = headers.get("webhook-signature")
    if not sent:
        return "unsigned"
    if not secret:
        return "not checked (no --secret and no WEBHOOK_SECRET)"
    msg_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not timestamp.isdigit():
        return "INVALID: webhook-timestamp is not a number"
    if abs(time.time() - int(timestamp)) > TIMESTAMP_TOLERANCE:
        return "INVALID: webhook-timestamp is more than 5 minutes away"
    expected = signing.signature(
        key=signing.secret_key_bytes(secret), msg_id=msg_id, timestamp=int(timestamp), body=body
    )
    if any(hmac.compare_digest(expected, candidate) for candidate in sent.split()):
        return "ok"
    return "INVALID: no signature matches the secret"


class Command(BaseCommand):
    help = (
        "Listen on 127.0.0.1 and print every webhook the gateway delivers (id, type, job, state, the "
        "answer or error, and whether its signature verifies), answering --status. For trying "
        "webhooks locally: the gateway must run with WEBHOOK_ALLOW_PRIVATE=true to call it. "
        "Ctrl-C stops it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8090, help="Port on 127.0.0.1 (default 8090).")
        parser.add_argument(
            "--secret",
            default=None,
            help="The whsec_ secret to verify signatures with (default WEBHOOK_SECRET; a key's own "
            "secret from `manage.py webhook_secret`).",
        )
        parser.add_argument(
            "--status",
            type=int,
            default=200,
            help="Status to answer (default 200; 503 makes the gateway retry).",
        )

    def handle(self, *args: object, port: int, secret: str | None, status: int, **options: object) -> None:
        secret = secret or settings.WEBHOOK_SECRET or None
        if secret:
            try:
                signing.secret_key_bytes(secret)
            except ValueError as exc:
                raise CommandError(f"--secret {exc}") from None
        command = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, MAX_BODY))
                command.print_delivery(
                    path=self.path,
                    headers=self.headers,
                    body=body,
                    check=signature_status(secret=secret, headers=self.headers, body=body),
                )
                reply = json.dumps({"received": True}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # one line per delivery is printed above

        try:
            server = HTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            raise CommandError(f"Cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
        self.stdout.write(
            f"webhook_receiver: listening on http://127.0.0.1:{server.server_port}/ (any path); "
            "Ctrl-C stops it"
        )

        def on_signal(*_: object) -> None:
            # shutdown() waits for serve_forever to return, so it cannot run on this thread.
            threading.Thread(target=server.shutdown, daemon=True).start()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        with server:
            server.serve_forever(poll_interval=0.2)

    def print_delivery(self, *, path: str, headers: Any, body: bytes, check: str) -> None:
        try:
            payload = json.loads(body)
        except ValueError:
            self.stdout.write(f"POST {path}: {len(body)} bytes, not JSON; signature {check}")
            return
        data = payload.get("data") or {}
        result, error = data.get("result") or {}, data.get("error") or {}
        outcome = (
            f"answer {str(result.get('response', ''))[:200]!r}"
            if result
            else f"error {error.get('type')}: {error.get('message', '')[:200]}"
        )
        self.stdout.write(
            f"POST {path} {headers.get('webhook-id', '-')} {payload.get('type')} job {data.get('jobId')} "
            f"{data.get('state')}: {outcome}; signature {check}"
        )
        self.stdout.flush()
