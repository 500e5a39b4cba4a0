"""The web's uvicorn protocol (core.gunicorn_worker), driven over a transport that records its writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from core.gunicorn_worker import JsonErrorHttpToolsProtocol

BODY = b'{"ok":true}'


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 3000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def sized(scope, receive, send) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else BODY})


async def streamed(scope, receive, send) -> None:
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"data: 2\n\n"})


def serve(protocol_class: type, app: Any, request: bytes) -> Transport:
    async def run() -> Transport:
        config = Config(app=app, lifespan="off", access_log=False, server_header=False, date_header=False)
        config.load()
        transport = Transport()
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
        protocol.connection_made(transport)
        protocol.data_received(request)
        for _ in range(50):
            await asyncio.sleep(0)
        protocol.connection_lost(None)
        return transport

    return asyncio.run(run())


GET = b"GET /x HTTP/1.1\r\nHost: example\r\n\r\n"
HEAD = b"HEAD /x HTTP/1.1\r\nHost: example\r\n\r\n"


@pytest.mark.parametrize("request_bytes", [GET, HEAD])
def test_a_response_of_known_length_is_one_write_of_the_same_bytes(request_bytes: bytes) -> None:
    ours = serve(JsonErrorHttpToolsProtocol, sized, request_bytes)
    stock = serve(HttpToolsProtocol, sized, request_bytes)
    assert len(ours.writes) == 1
    assert ours.writes[0] == b"".join(stock.writes)
    assert ours.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert ours.writes[0].endswith(b"\r\n\r\n" if request_bytes == HEAD else b"\r\n\r\n" + BODY)


def test_a_streamed_response_sends_its_head_at_once() -> None:
    ours = serve(JsonErrorHttpToolsProtocol, streamed, GET)
    stock = serve(HttpToolsProtocol, streamed, GET)
    assert ours.writes == stock.writes and len(ours.writes) == 3
    assert ours.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
