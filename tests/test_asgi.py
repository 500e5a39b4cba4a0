"""The ASGI entry point in-process: routing by view kind, the server's ceilings, the WSGI bridge."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from core.asgi import GatewayASGIHandler, is_async_view, wsgi_environ


def call(
    app: GatewayASGIHandler, path: str, *, method: str = "GET", headers: list | None = None, body: bytes = b""
) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), *(headers or [])],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 3000),
    }
    sent: list[dict[str, Any]] = []
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.lower(): v for k, v in start["headers"]}, content


def test_async_views_are_told_from_sync_ones_by_their_url() -> None:
    assert is_async_view("/api/query/abc/stream") and is_async_view("/api/query/abc")
    assert not is_async_view("/api/query") and not is_async_view("/health")
    assert not is_async_view("/no/such/page")


# The web threads are the process's: one that an earlier test used holds its database connection,
# which Django checks at the request's start.
@pytest.mark.django_db
def test_sync_views_are_answered_by_the_wsgi_handler_on_a_thread() -> None:
    status, headers, body = call(GatewayASGIHandler(), "/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert headers[b"content-type"] == b"application/json"


def test_the_servers_ceilings_answer_in_the_json_shape() -> None:
    app = GatewayASGIHandler()
    status, headers, body = call(app, "/health", headers=[(f"x-h{i}".encode(), b"1") for i in range(150)])
    assert status == 431 and headers[b"content-type"] == b"application/json"
    assert json.loads(body)["error"]["type"] == "request_too_large"
    status, _, _ = call(app, "/health", headers=[(b"x-pad", b"p" * 9000)])
    assert status == 431
    status, _, _ = call(app, "/" + "a" * 9000)
    assert status == 414


def test_the_environ_holds_the_path_as_latin1_text_of_its_bytes_and_joins_repeated_headers() -> None:
    scope = {
        "method": "GET",
        "path": "/café",
        "query_string": b"a=1",
        "headers": [(b"x-a", b"1"), (b"x-a", b"2"), (b"content-type", b"text/plain")],
    }
    environ = wsgi_environ(scope, None)
    assert environ["PATH_INFO"] == "/café".encode().decode("latin1")
    assert environ["HTTP_X_A"] == "1,2" and environ["CONTENT_TYPE"] == "text/plain"
    assert environ["QUERY_STRING"] == "a=1"
