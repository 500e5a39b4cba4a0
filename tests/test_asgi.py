"""The ASGI entry point in-process: routing by view kind, the server's ceilings, the WSGI bridge,
body limits and the drain of what a refusal left unread."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from core.asgi import GatewayASGIHandler, is_async_view, wsgi_environ
from core.asgi_body import DrainUnreadBody


def http_scope(path: str, method: str, headers: list) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 3000),
    }


def call(
    app: GatewayASGIHandler, path: str, *, method: str = "GET", headers: list | None = None, body: bytes = b""
) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = http_scope(path, method, headers or [])
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


def drive(
    app, headers: list, chunks: list[bytes], *, path: str = "/api/query"
) -> tuple[list[dict], list[dict]]:
    """Run ``app`` for a POST whose body arrives as ``chunks``: what it sent, and what it was given
    by ``receive()`` (an empty list of chunks: the client sends nothing, then stays silent)."""
    scope = http_scope(path, "POST", headers)
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent: list[dict] = []
    given: list[dict] = []

    async def receive() -> dict:
        message = pending.pop(0) if pending else await asyncio.sleep(3600)
        given.append(message)
        return message

    async def send(message) -> None:
        sent.append(dict(message))

    asyncio.run(app(scope, receive, send))
    return sent, given


async def refusing_app(scope, receive, send) -> None:
    """An application that answers 413 without reading the body."""
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_refusal_drains_the_rest_of_the_body_before_its_answer_ends(settings) -> None:
    settings.REQUEST_DISCARD_MAX_BYTES, settings.REQUEST_DISCARD_SECONDS = 1000, 5
    sent, given = drive(DrainUnreadBody(refusing_app), [(b"content-length", b"900")], [b"x" * 300] * 3)
    # The answer goes out whole first; its end (and uvicorn's close) waits for the body to be read.
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]
    assert sent[1] == {"type": "http.response.body", "body": b"{}", "more_body": True}
    assert sent[2]["body"] == b"" and not sent[2].get("more_body")
    assert len(given) == 3 and b"connection" not in dict(sent[0]["headers"])  # kept alive if asked


def test_a_body_announced_past_the_bound_is_cut_at_once_and_a_trickle_is_waited_for_no_longer(
    settings,
) -> None:
    settings.REQUEST_DISCARD_MAX_BYTES, settings.REQUEST_DISCARD_SECONDS = 1000, 0.2
    sent, given = drive(DrainUnreadBody(refusing_app), [(b"content-length", b"5000")], [b"x" * 5000])
    assert given == [] and dict(sent[0]["headers"])[b"connection"] == b"close"
    assert sent[1] == {"type": "http.response.body", "body": b"{}"}
    # A client waiting for 100 Continue never sent its body: nothing to wait for.
    expect = [(b"content-length", b"900"), (b"expect", b"100-continue")]
    sent, given = drive(DrainUnreadBody(refusing_app), expect, [b"x" * 900])
    assert given == [] and dict(sent[0]["headers"])[b"connection"] == b"close"
    # Nothing more arrives: the answer ends after REQUEST_DISCARD_SECONDS.
    started = time.monotonic()
    sent, given = drive(DrainUnreadBody(refusing_app), [(b"content-length", b"900")], [])
    assert given == [] and sent[-1]["body"] == b"" and time.monotonic() - started < 5
    # A chunked body's rest is unknown: drained within the bounds, then the connection closes.
    sent, given = drive(DrainUnreadBody(refusing_app), [(b"transfer-encoding", b"chunked")], [b"x" * 600] * 3)
    assert len(given) == 2 and dict(sent[0]["headers"])[b"connection"] == b"close"


def test_bodies_read_in_full_pass_untouched(settings) -> None:
    async def reading_app(scope, receive, send) -> None:
        while (await receive()).get("more_body"):
            pass
        await refusing_app(scope, receive, send)

    sent, given = drive(DrainUnreadBody(reading_app), [(b"content-length", b"600")], [b"x" * 300] * 2)
    assert len(given) == 2 and sent[1] == {"type": "http.response.body", "body": b"{}"}


def test_a_body_over_request_max_bytes_is_refused_before_django_reads_it(settings) -> None:
    settings.REQUEST_MAX_BYTES = 1024
    app = GatewayASGIHandler()
    sent, given = drive(app, [(b"content-length", b"5000")], [b"x" * 5000])
    assert given == [] and sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["details"] == {"limitBytes": 1024}
    # Chunked, to an async view (Django's ASGI handler would spool the whole body): cut once past
    # the limit, the application told the client left, nothing of its own sent after the 413.
    sent, given = drive(app, [(b"transfer-encoding", b"chunked")], [b"x" * 600] * 10, path="/api/query/abc")
    assert len(given) == 2 and [m.get("status") for m in sent] == [413, None]
    assert json.loads(sent[1]["body"])["error"]["type"] == "request_too_large"
