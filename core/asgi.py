"""The ASGI entry point: async views on the event loop, everything else on the WSGI handler in threads.

The web runs under gunicorn with uvicorn workers (core.gunicorn_worker). A request for an async
view (a job's event stream, ``?wait=``: clients that wait) goes to Django's ASGIHandler and holds no
thread while it waits, so one process holds hundreds of open streams. Every other request goes to
``core.handlers.GatewayWSGIHandler`` on a pool of ``WEB_THREADS`` threads: the same handler, the
same fast paths (a cache hit answered before Django) and the same middleware as under a threaded
WSGI server, with sync views running in parallel threads. The async views' own sync work (keys,
the ORM) runs on the same threads (:func:`in_web_thread`).

gunicorn's own ceilings on the request line, one header field and the number of fields, which
uvicorn does not have, are enforced here, before either handler runs, in the API's JSON shape; so is
REQUEST_MAX_BYTES (from Content-Length, or as a chunked body arrives), before Django's ASGI handler
would spool the whole body. What a refusal leaves unread is drained by core.asgi_body.DrainUnreadBody.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections
from django.urls import Resolver404, get_resolver
from django.utils.module_loading import import_string

from core.asgi_body import Receive, Scope, Send, body_limited, content_length, is_chunked
from core.db import connections_drop_broken
from core.errors import STATUS_TYPES, error_body
from core.handlers import FAST_PATH_TRIED, ON_THREAD, GatewayWSGIHandler, MiddlewareList, api_middleware

# gunicorn's limit_request_line, limit_request_field_size and limit_request_fields, kept as they were.
LIMIT_REQUEST_LINE = 8190
LIMIT_FIELD_SIZE = 8190
LIMIT_FIELDS = 100
# Bodies up to this size are read on the event loop before the WSGI handler runs; a larger one is
# read from the thread as the handler asks for it, so a refused body is never read whole.
_PREREAD_BYTES = 64 * 1024


class _AsyncViewHandler(MiddlewareList, ASGIHandler):
    """Django's ASGIHandler with only the given middleware (the API's, for API paths)."""


_web_threads: ThreadPoolExecutor | None = None


def web_threads() -> ThreadPoolExecutor:
    """The process's WEB_THREADS threads: the WSGI handler's, and sync work of async views.

    A bounded pool with long-lived threads, so database connections (CONN_MAX_AGE) are reused. Django
    runs an async view's sync code in a thread of the request's own, alive until the response ends:
    for a stream, a database connection held as long as the stream is open.
    """
    global _web_threads
    if _web_threads is None:
        _web_threads = ThreadPoolExecutor(max_workers=settings.WEB_THREADS, thread_name_prefix="web")
    return _web_threads


async def in_web_thread(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` on a web thread, with the caller's context (log ids), between
    the database-connection checks Django makes at a request's start and end."""

    def run() -> Any:
        close_old_connections()
        connections_drop_broken()  # one PostgreSQL ended (a restart, a failover) is replaced first
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(web_threads(), context.run, run)


class GatewayASGIHandler:
    def __init__(self) -> None:
        self.wsgi = GatewayWSGIHandler()
        self.threaded = ThreadedWSGI(self.wsgi, executor=web_threads())
        self.api_async = _AsyncViewHandler(api_middleware())
        self.site_async = _AsyncViewHandler(list(settings.MIDDLEWARE))
        self.api_prefixes = tuple(settings.API_PATH_PREFIXES)
        self.loop_fast_paths = {
            (method, path): import_string(function)
            for (method, path), function in getattr(settings, "LOOP_FAST_PATHS", {}).items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"unsupported ASGI scope type {scope['type']!r}")
        refusal = protocol_refusal(scope)
        if refusal is not None:
            await send_json_error(send, *refusal)
            return
        refused = body_refusal(scope)
        if refused is not None:
            await send_json_error(send, *refused)
            return
        path = scope["path"]
        if is_chunked(scope) and not path.startswith(settings.REQUEST_MAX_BYTES_EXEMPT):
            limit = settings.REQUEST_MAX_BYTES
            receive, send = body_limited(
                receive, send, limit, functools.partial(_refuse_chunked, limit=limit)
            )
        fast = self.wsgi.fast_paths.get((scope["method"], path))
        if fast is not None:
            await self._fast(fast, scope, receive, send)
            return
        if is_async_view(path):
            handler = self.api_async if path.startswith(self.api_prefixes) else self.site_async
            await handler(scope, receive, send)
            return
        await self.threaded(scope, receive, send)

    async def _fast(self, fast: Callable[..., Any], scope: Scope, receive: Receive, send: Send) -> None:
        """A fast path (a cache hit), its reply sent from the loop. Its LOOP_FAST_PATHS coroutine runs
        on the loop itself, no thread hop at all, when it can answer without a blocking call; else
        the FAST_PATHS function runs on a web thread (one hop each way: on the loop its blocking
        Redis round trip would stall every stream of the process). What it declines goes on to its
        view with its body intact, the fast path not tried again: the WSGI handler, or Django's ASGI
        handler for an async view (the /v1/ APIs)."""
        length = content_length(scope)
        if length is None or length > _PREREAD_BYTES:
            if is_async_view(scope["path"]):
                await self.api_async(scope, receive, send)
            else:
                await self.threaded(scope, receive, send)
            return
        body = await _read_body(receive, length)
        environ = wsgi_environ(scope, io.BytesIO(body))
        on_loop = self.loop_fast_paths.get((scope["method"], scope["path"]))
        answered = ON_THREAD if on_loop is None else await on_loop(environ)
        if answered is ON_THREAD:
            loop = asyncio.get_running_loop()
            answered = await loop.run_in_executor(self.threaded.executor, fast, environ)
        if answered is None:
            if is_async_view(scope["path"]):
                await self.api_async(scope, _body_again(body, receive), send)
                return
            environ[FAST_PATH_TRIED] = True
            await self.threaded.call(environ, send)
            return
        response = cast(tuple[Any, Any], answered)[1]
        headers = [(k.encode("latin1"), v.encode("latin1")) for k, v in response.items()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": response.content})


def _body_again(body: bytes, receive: Receive) -> Receive:
    """``receive`` for an application that must read a body already read: it, then what follows."""
    pending: list[Mapping[str, Any]] = [{"type": "http.request", "body": body, "more_body": False}]

    async def again() -> Mapping[str, Any]:
        return pending.pop() if pending else await receive()

    return again


class ThreadedWSGI:
    """A WSGI application served to ASGI from a pool of threads, as a threaded WSGI server does."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        *,
        threads: int = 4,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.app = app
        self.executor = executor or ThreadPoolExecutor(max_workers=threads, thread_name_prefix="web")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        loop = asyncio.get_running_loop()
        body: io.RawIOBase | io.BytesIO
        length = content_length(scope)
        if length is not None and length <= _PREREAD_BYTES:
            body = io.BytesIO(await _read_body(receive, length))
        else:
            body = _ThreadBody(receive, loop)
        await self.call(wsgi_environ(scope, body), send)

    async def call(self, environ: dict[str, Any], send: Send) -> None:
        """Run the WSGI application for ``environ`` on a thread, its reply sent from the loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self._wsgi_call, environ, send, loop)

    def _wsgi_call(self, environ: dict[str, Any], send: Send, loop: asyncio.AbstractEventLoop) -> None:
        """Run the WSGI handler in this thread; hand what it answers to the event loop."""
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started["status"] = int(status.split(" ", 1)[0])
            started["headers"] = [(k.lower().encode("latin1"), v.encode("latin1")) for k, v in headers]

        def deliver(*messages: dict[str, Any]) -> None:
            asyncio.run_coroutine_threadsafe(_send_all(send, messages), loop).result()

        result: Iterable[bytes] = self.app(environ, start_response)
        try:
            if not getattr(result, "streaming", False):
                # One hop to the loop for the whole reply: what nearly every request is.
                content = b"".join(result)
                deliver(_start(started), {"type": "http.response.body", "body": content})
                return
            head_sent = False
            for chunk in result:
                if not head_sent:
                    deliver(_start(started))
                    head_sent = True
                if chunk:
                    deliver({"type": "http.response.body", "body": chunk, "more_body": True})
            if not head_sent:
                deliver(_start(started))
            deliver({"type": "http.response.body", "body": b""})
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


def _start(started: dict[str, Any]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": started["status"], "headers": started["headers"]}


async def _send_all(send: Send, messages: Iterable[dict[str, Any]]) -> None:
    for message in messages:
        await send(message)


@functools.lru_cache(maxsize=4096)
def is_async_view(path: str) -> bool:
    """Whether the URL's view is a coroutine function (a stream, ``?wait=``)."""
    try:
        match = get_resolver().resolve(path)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)


def protocol_refusal(scope: Scope) -> tuple[int, str] | None:
    """gunicorn's ceilings: 414 for a request line over 8190 bytes, 431 for a header field over
    8190 bytes or more than 100 fields."""
    line = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope["query_string"]) + 11
    if line > LIMIT_REQUEST_LINE:
        return 414, "The request line (method and URL) is too long."
    headers = scope["headers"]
    if len(headers) > LIMIT_FIELDS or any(len(k) + len(v) + 2 > LIMIT_FIELD_SIZE for k, v in headers):
        return 431, "The request headers are too large or too many."
    return None


def body_refusal(scope: Scope) -> tuple[int, str, dict[str, Any]] | None:
    """REQUEST_MAX_BYTES from Content-Length (core.middleware.BodySizeLimitMiddleware's refusal, made
    before Django's ASGI handler reads the body); paths with a limit of their own are left alone."""
    if scope["path"].startswith(settings.REQUEST_MAX_BYTES_EXEMPT):
        return None
    declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
    if declared is None:
        return None
    if not declared.isdigit():
        return 400, "Content-Length is not a number.", {}
    length, limit = int(declared), settings.REQUEST_MAX_BYTES
    if length > limit:
        return 413, f"Request body is {length} bytes; the limit is {limit}.", {"limitBytes": limit}
    return None


async def _refuse_chunked(send: Send, *, limit: int) -> None:
    await send_json_error(
        send, 413, f"Request body is over {limit} bytes; the limit is {limit}.", {"limitBytes": limit}
    )


async def send_json_error(
    send: Send, status: int, message: str, details: dict[str, Any] | None = None
) -> None:
    body = json.dumps(
        error_body(STATUS_TYPES.get(status, "invalid_request_error"), message, details)
    ).encode()
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, length: int) -> bytes:
    chunks: list[bytes] = []
    more = True  # an empty body still comes as one http.request message
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


class _ThreadBody(io.RawIOBase):
    """A large body, read from the WSGI thread as the handler asks for it."""

    def __init__(self, receive: Receive, loop: asyncio.AbstractEventLoop) -> None:
        self._receive = receive
        self._loop = loop
        self._buffer = bytearray()
        self._done = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        message = asyncio.run_coroutine_threadsafe(self._receive(), self._loop).result()
        if message["type"] == "http.disconnect":
            self._done = True
            return
        self._buffer += message.get("body", b"")
        self._done = not message.get("more_body", False)

    def readinto(self, target: Any) -> int:
        while not self._buffer and not self._done:
            self._fill()
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        del self._buffer[:size]
        return size


def wsgi_environ(scope: Scope, body: Any) -> dict[str, Any]:
    """The WSGI environ of an ASGI HTTP scope (PEP 3333: the path as latin-1 text of its bytes)."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf8").decode("latin1"),
        "PATH_INFO": scope["path"].encode("utf8").decode("latin1"),
        "QUERY_STRING": scope["query_string"].decode("latin1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin1").upper().replace("-", "_")
        value = raw_value.decode("latin1")
        key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{name}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


async def _lifespan(receive: Receive, send: Send) -> None:
    # gunicorn's hooks (gateway_project/gunicorn.conf.py) do the start-up work; nothing to add here.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
