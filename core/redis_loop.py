"""A Redis connection on the event loop for the hot path's one short command (a cache hit's script).

redis.asyncio costs several times the sync client's CPU per command (streams, a timeout context and
a connection checked out of a pool for each), which took away what answering on the loop saves.
This is a single pipelined connection per event loop over an ``asyncio.Protocol``: a command is
one ``write``, its reply is parsed as it arrives, and replies come back in the order commands
were sent (Redis serves one connection in order), so any number of requests in flight share it.

Failures are redis-py's exceptions, so callers handle them as they do the sync client's: a lost or
refused connection is ``ConnectionError`` for every command in flight (the next command connects
again), a command with no reply after the socket timeout is ``TimeoutError`` and ends the
connection (the replies after it could no longer be matched), an error reply is ``ResponseError``
(``NoScriptError`` for NOSCRIPT). Only ``redis://`` and ``unix://`` URLs are supported:
:func:`loop_redis` returns None for others (TLS), and the caller uses a thread.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from typing import Any

from django.conf import settings
from redis.connection import parse_url
from redis.exceptions import ConnectionError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_NEED_MORE = object()


def _pack(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        value = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(parts)


def _parse(buffer: bytes | bytearray, start: int) -> tuple[Any, int]:
    """One RESP2 reply from ``buffer[start:]``: (value, end), or (_NEED_MORE, start)."""
    end = buffer.find(b"\r\n", start)
    if end < 0:
        return _NEED_MORE, start
    kind, line = buffer[start : start + 1], bytes(buffer[start + 1 : end])
    after = end + 2
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return _NEED_MORE, start
        return bytes(buffer[after : after + size]), after + size + 2
    if kind == b":":
        return int(line), after
    if kind == b"+":
        return line, after
    if kind == b"-":
        text = line.decode(errors="replace")
        return (NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text)), after
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = _parse(buffer, after)
            if item is _NEED_MORE:
                return _NEED_MORE, start
            items.append(item)
        return items, after
    raise ConnectionError(f"unexpected Redis reply type {kind!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, client: LoopRedis) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        start = 0
        try:
            while self.pending:
                value, end = _parse(self.buffer, start)
                if value is _NEED_MORE:
                    break
                start = end
                future = self.pending.popleft()
                if not future.done():
                    if isinstance(value, ResponseError):
                        future.set_exception(value)
                    else:
                        future.set_result(value)
        except (ValueError, ConnectionError) as exc:
            self.fail(ConnectionError(f"unreadable Redis reply: {exc}"))
            return
        del self.buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError("Connection closed by server." if exc is None else str(exc)))

    def fail(self, error: Exception) -> None:
        self.client._forget(self)
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.close()


class LoopRedis:
    """One pipelined connection to Redis for the running event loop (see the module's docstring)."""

    def __init__(self, url: str, *, connect_timeout: float | None, timeout: float | None) -> None:
        self.options = parse_url(url)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    def _forget(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    async def _connected(self) -> _Protocol:
        if self._protocol is not None:
            return self._protocol
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self.options
        try:
            async with asyncio.timeout(self.connect_timeout):
                if "path" in options:
                    _, protocol = await loop.create_unix_connection(lambda: _Protocol(self), options["path"])
                else:
                    _, protocol = await loop.create_connection(
                        lambda: _Protocol(self), options.get("host", "localhost"), options.get("port", 6379)
                    )
        except OSError as exc:  # TimeoutError among them
            raise ConnectionError(f"cannot connect to Redis: {exc}") from exc
        setup: list[tuple[Any, ...]] = []
        if options.get("password") is not None:
            user = options.get("username")
            setup.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if options.get("db"):
            setup.append(("SELECT", options["db"]))
        for command in setup:
            await self._send(protocol, command)
        self._protocol = protocol
        return protocol

    async def _send(self, protocol: _Protocol, args: tuple[Any, ...]) -> Any:
        assert protocol.transport is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        protocol.pending.append(future)
        protocol.transport.write(_pack(args))
        if self.timeout is None:
            return await future
        timer = loop.call_later(self.timeout, _expire, protocol, future)
        try:
            return await future
        finally:
            timer.cancel()

    async def execute(self, *args: Any) -> Any:
        """The command's reply (bytes, int, None or a list); raises as the module's docstring says."""
        return await self._send(await self._connected(), args)

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.fail(ConnectionError("closed"))


def _expire(protocol: _Protocol, future: asyncio.Future[Any]) -> None:
    if not future.done():
        protocol.fail(RedisTimeoutError("Timeout reading from Redis"))


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopRedis] = weakref.WeakKeyDictionary()


def loop_redis() -> LoopRedis | None:
    """The running loop's connection to the Redis core.redis.redis_client talks to, with its
    timeouts; None when its URL is not one this client speaks (``rediss://``)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        cache: dict[str, Any] = settings.CACHES["default"]
        location = str(cache["LOCATION"])
        if not location.startswith(("redis://", "unix://")):
            return None
        options: dict[str, Any] = cache.get("OPTIONS", {})
        client = _clients[loop] = LoopRedis(
            location,
            connect_timeout=options.get("SOCKET_CONNECT_TIMEOUT"),
            timeout=options.get("SOCKET_TIMEOUT"),
        )
    return client
