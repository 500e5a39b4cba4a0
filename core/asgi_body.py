"""Request bodies under ASGI: refused past a limit before the application reads them, and the rest of
a body the application answered without reading drained before the connection closes.

A server that answers before reading the body (a 413 from Content-Length, a 401) and then closes the
connection with the body still arriving makes the kernel send a TCP reset, and a reset destroys the
answer the client has not read yet: a client that sends its body without ``Expect: 100-continue``
(Python's urllib, many HTTP libraries) sees "connection reset" instead of the JSON error. uvicorn
closes at once after a response on a connection that is not kept alive, so ``DrainUnreadBody`` holds
the response's last message back, reads and drops what is left of the body from ``receive()`` within
REQUEST_DISCARD_MAX_BYTES and REQUEST_DISCARD_SECONDS, then ends the response: the close is a clean
one. Past the bounds the connection closes as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from django.conf import settings

Scope = dict[str, Any]
Receive = Callable[[], Coroutine[Any, Any, Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DISCONNECT: Mapping[str, Any] = {"type": "http.disconnect"}


def content_length(scope: Scope) -> int | None:
    """The declared body length; 0 for a request without a body, None for a chunked (or malformed) one."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return 0 if not any(name == b"transfer-encoding" for name, _ in scope["headers"]) else None


def is_chunked(scope: Scope) -> bool:
    names = {name for name, _ in scope["headers"]}
    return b"transfer-encoding" in names and b"content-length" not in names


async def discard_received(receive: Receive, *, max_bytes: int, seconds: float) -> int:
    """Read and drop what is left of a request body: at most ``max_bytes``, for at most ``seconds``.

    Stops early when the body ends or the client goes away. Returns the bytes read.
    """
    total = 0
    try:
        async with asyncio.timeout(seconds):
            while total < max_bytes:
                message = await receive()
                if message.get("type") != "http.request":
                    break
                total += len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        pass
    return total


class DrainUnreadBody:
    """ASGI wrapper: a response given before the body has all arrived drains the rest before it ends.

    When the response starts with the body unfinished: a body announced as more than
    REQUEST_DISCARD_MAX_BYTES beyond what has arrived, or one the client has not sent yet because it
    waits for ``100 Continue`` (never asked for), is not waited for: the response says
    ``Connection: close`` and the connection closes at once. A chunked one is drained and the
    connection then closes (its rest, past the bounds, is unknown). Otherwise the body is drained and
    the connection stays open if the client asked for that.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or content_length(scope) == 0:
            await self.app(scope, receive, send)
            return
        announced = content_length(scope)
        expects_continue = any(name == b"expect" for name, _ in scope["headers"])
        received = 0
        finished = False  # the whole body has arrived, or the client has gone
        asked = False  # the application has called receive() (uvicorn then sends 100 Continue)
        drain = False

        async def counting_receive() -> Mapping[str, Any]:
            nonlocal received, finished, asked
            asked = True
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                finished = not message.get("more_body", False)
            else:
                finished = True
            return message

        async def draining_send(message: Mapping[str, Any]) -> None:
            nonlocal drain
            kind = message.get("type")
            if kind == "http.response.start" and not finished:
                unread = None if announced is None else announced - received
                cut = (expects_continue and not asked) or (
                    unread is not None and unread > settings.REQUEST_DISCARD_MAX_BYTES
                )
                drain = not cut
                if cut or unread is None:
                    message = _closing(message)
            elif kind == "http.response.body" and drain and not message.get("more_body", False):
                drain = False
                if message.get("body"):
                    await send({**message, "more_body": True})
                await discard_received(
                    counting_receive,
                    max_bytes=settings.REQUEST_DISCARD_MAX_BYTES,
                    seconds=settings.REQUEST_DISCARD_SECONDS,
                )
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app(scope, counting_receive, draining_send)


def _closing(start: Mapping[str, Any]) -> Mapping[str, Any]:
    headers = list(start.get("headers") or [])
    if not any(name.lower() == b"connection" for name, _ in headers):
        headers.append((b"connection", b"close"))
    return {**start, "headers": headers}


def body_limited(
    receive: Receive, send: Send, limit: int, refuse: Callable[[Send], Awaitable[None]]
) -> tuple[Receive, Send]:
    """``receive`` and ``send`` for an application whose body may not pass ``limit`` bytes.

    As soon as more has arrived (a chunked body, which declares no length), ``refuse(send)`` answers,
    the application is told the client went away so it stops reading (Django's ASGI handler would
    otherwise spool the whole body), and whatever it sends afterwards is dropped.
    """
    received = 0
    refused = False
    started = False

    async def limited_receive() -> Mapping[str, Any]:
        nonlocal received, refused
        if refused:
            return DISCONNECT
        message = await receive()
        if message.get("type") == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                refused = True
                if not started:
                    await refuse(send)
                return DISCONNECT
        return message

    async def guarded_send(message: Mapping[str, Any]) -> None:
        nonlocal started
        if refused and not started:
            return
        started = True
        await send(message)

    return limited_receive, guarded_send
