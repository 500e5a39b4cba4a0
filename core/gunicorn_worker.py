"""gunicorn's worker for the web: uvicorn (ASGI), with the server's own refusals in the API's JSON shape.

uvicorn answers a request it cannot parse (a malformed request line or header, headers past its
buffer) itself, before the application runs, with a plain-text 400. Clients of the API get
``{"error": {...}}`` for those too. gunicorn's ceilings on the request line, a header field and the
number of fields are enforced by core.asgi in the same shape.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from gunicorn import glogging, util
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn_worker import UvicornWorker

# (status, reason) by what gunicorn reported; everything else keeps gunicorn's status.
_LINE_TOO_LONG = "Request Line is too large"
_TYPES = {
    400: "invalid_request_error",
    403: "permission_error",
    414: "request_too_large",
    431: "request_too_large",
    500: "api_error",
    501: "invalid_request_error",
}
_MESSAGES = {
    400: "Malformed HTTP request.",
    403: "Request forbidden.",
    414: "The request line (method and URL) is too long.",
    431: "The request headers are too large or too many.",
    500: "Internal error.",
    501: "Unsupported transfer coding.",
}


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:  # noqa: ANN001
    if status_int == 400 and _LINE_TOO_LONG in mesg:
        status_int, reason = 414, "URI Too Long"
    # gunicorn's own message can quote what the client sent (a header name, a request line): it is
    # logged by gunicorn, not echoed back.
    body = json.dumps(
        {
            "error": {
                "type": _TYPES.get(status_int, "invalid_request_error"),
                "message": _MESSAGES.get(status_int, reason),
                "details": {},
            }
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin1") + body)


def json_error_body(status: int) -> bytes:
    return json.dumps(
        {
            "error": {
                "type": _TYPES.get(status, "invalid_request_error"),
                "message": _MESSAGES.get(status, "Malformed HTTP request."),
                "details": {},
            }
        }
    ).encode()


class JsonErrorH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, answering what it cannot parse with the API's JSON 400."""

    def send_400_response(self, msg: str) -> None:
        # uvicorn's message can quote what the client sent; it is logged, not echoed back.
        body = json_error_body(400)
        headers = [
            (b"Content-Type", b"application/json"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
        ]
        self.transport.write(
            self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request"))
        )
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()


class _ListenBacklog:
    """A listening socket whose ``listen(n)`` keeps the kernel queue at gunicorn's length: asyncio
    calls it with the server's backlog, which here only bounds accepts per wake-up."""

    def __init__(self, sock: object, backlog: int) -> None:
        self._sock = sock
        self._backlog = backlog

    def listen(self, _backlog: int) -> None:
        self._sock.listen(self._backlog)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


class _HeadHeld:
    """Stands in for the transport while uvicorn writes a response's status line and headers."""

    def __init__(self) -> None:
        self.head = b""

    def write(self, data: bytes) -> None:
        self.head += data


class _HeadFirst:
    """Stands in for the transport while uvicorn writes the body: the held head goes out with it."""

    def __init__(self, transport: Any, head: bytes) -> None:
        self.transport = transport
        self.head: bytes | None = head

    def write(self, data: bytes) -> None:
        self.flush(data)

    def flush(self, data: bytes = b"") -> None:
        if self.head is not None:
            data, self.head = self.head + data, None
        if data:
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


def _sized(message: Any) -> bool:
    return any(name.lower() == b"content-length" for name, _ in message.get("headers", ()))


class _OneWriteCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, writing a response of known length (Content-Length) in one
    write, head and body together, where uvicorn writes them apart: one send() per response instead
    of two. Streamed responses (event streams, chunked) keep their head's own write, so a client sees
    it at once."""

    _head = b""

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.response_started and _sized(message):
            transport, held = self.transport, _HeadHeld()
            self.transport = held  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
            self._head = held.head
            return
        head = self._head
        if not head or kind != "http.response.body":
            await super().send(message)
            return
        self._head = b""
        first = _HeadFirst(self.transport, head)
        transport, self.transport = self.transport, first  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = transport
            first.flush()  # nothing was written (HEAD): the head alone


class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools (llhttp) protocol, answering what it cannot parse with the API's JSON 400,
    and writing each response of known length in one write (_OneWriteCycle)."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # uvicorn names its cycle class inside this method; the application's task, created here,
        # has not run yet, so the cycle answers as _OneWriteCycle from its first send.
        cycle = self.cycle
        if cycle is not None and type(cycle) is RequestResponseCycle:
            cycle.__class__ = _OneWriteCycle

    def send_400_response(self, msg: str) -> None:
        body = json_error_body(400)
        head = (
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        self.transport.write(head + body)
        self.transport.close()


class GatewayUvicornWorker(UvicornWorker):
    """uvicorn under gunicorn: the asyncio loop, the JSON-refusing HTTP/1.1 protocol, the
    application's own access line (core.logs) instead of uvicorn's, and a bounded graceful stop
    (open event streams would otherwise hold it until gunicorn's kill)."""

    CONFIG_KWARGS = {
        "loop": "asyncio",
        # httptools parses HTTP in C (llhttp): a cache hit's request costs a fraction of h11's.
        "http": "core.gunicorn_worker:JsonErrorHttpToolsProtocol",
        "lifespan": "on",
        "access_log": False,
        "timeout_graceful_shutdown": 5,
        "server_header": False,
        # asyncio accepts up to `backlog` connections each time the listening socket is readable:
        # with gunicorn's 2048 the first worker to wake takes every connection a client opens at
        # once, and the other workers idle beside it. One per wake-up shares them out as gunicorn's
        # own workers do; the kernel's queue keeps gunicorn's length (_ListenBacklog).
        "backlog": 1,
    }

    async def _serve(self) -> None:
        self.sockets = [_ListenBacklog(sock, self.cfg.backlog) for sock in self.sockets]
        await super()._serve()

    def init_process(self) -> None:
        # gunicorn's own error page, should gunicorn write one, in the same shape.
        util.write_error = write_json_error
        super().init_process()


class GatewayLogger(glogging.Logger):
    """gunicorn's logger, minus the access line's formatting when nothing would print it.

    With a ``logconfig_dict`` gunicorn builds every request's access-log fields whether or not the
    access log is on; the application writes its own access line (core.logs.RequestContextMiddleware).
    """

    def access(self, resp, req, environ, request_time) -> None:  # noqa: ANN001
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)
