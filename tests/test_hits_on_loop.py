"""Cache hits answered on the ASGI event loop (queries.hits.cache_hit_response_on_loop over
core.redis_loop), compared with the thread's fast path and with the full path, through the ASGI
application gunicorn's uvicorn workers serve."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from unittest import mock

import pytest
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from core.asgi import GatewayASGIHandler
from core.redis import redis_client
from core.redis_loop import LoopRedis, _parse
from queries import auth, hits, services
from queries.models import ApiKey, QueryRequest
from queries.services import journal
from tests.test_asgi import call
from tests.test_hits import QUERY, cache_entry, full_path_calls

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_db")]


@pytest.fixture
def cached(api_key):
    return cache_entry(api_key)


def asgi_post(app: GatewayASGIHandler, body: object, *, key: str | None) -> tuple[int, dict[str, str], Any]:
    """POST /api/query through the ASGI application; (status, headers, parsed body)."""
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    status, named, content = call(app, "/api/query", method="POST", headers=headers, body=raw)
    return status, {k.decode(): v.decode() for k, v in named.items()}, json.loads(content)


def thread_calls():
    return mock.patch.object(hits, "cache_hit_response", autospec=True, side_effect=hits.cache_hit_response)


def loop_calls():
    return mock.patch.object(
        services, "query_cache_answer_on_loop", autospec=True, side_effect=services.query_cache_answer_on_loop
    )


def answered_on_loop(app: GatewayASGIHandler, body: object, key: str) -> tuple[int, dict[str, str], Any]:
    app.loop_fast_paths = {("POST", "/api/query"): hits.cache_hit_response_on_loop}
    with loop_calls() as on_loop, thread_calls() as thread:
        app.wsgi.fast_paths = {("POST", "/api/query"): hits.cache_hit_response}
        reply = asgi_post(app, body, key=key)
    assert (on_loop.call_count, thread.call_count) == (1, 0)
    return reply


def test_a_hit_on_the_loop_is_the_threads_and_the_full_paths_answer(cached):
    row, key, job = cached
    app = GatewayASGIHandler()
    # The key is not held yet: a database read, so the thread's fast path answers.
    with thread_calls() as thread:
        app.wsgi.fast_paths = {("POST", "/api/query"): hits.cache_hit_response}
        status, thread_headers, thread_body = asgi_post(app, {"query": QUERY}, key=key)
    assert status == 200 and thread.call_count == 1 and thread_body["cached"] is True

    status, headers, body = answered_on_loop(app, {"query": " what is 2+2? "}, key)
    assert status == 200
    assert body["requestId"] == headers["x-request-id"] != thread_body["requestId"]
    assert (body["jobId"], body["status"], body["cached"]) == (str(job.id), "completed", True)
    assert body["result"] == thread_body["result"]
    assert set(headers) == set(thread_headers)
    assert {k: v for k, v in headers.items() if k not in ("x-request-id", "content-length")} == {
        k: v for k, v in thread_headers.items() if k not in ("x-request-id", "content-length")
    }

    # The full path's answer (every fast path declining), through Django, DRF and the API middleware.
    app.loop_fast_paths = {}
    with mock.patch.object(services, "query_cache_answer", autospec=True, return_value=None):
        with full_path_calls() as full:
            status, full_headers, expected = asgi_post(app, {"query": QUERY}, key=key)
    assert full.call_count == 1 and status == 200
    assert list(body) == list(expected) and body["result"] == expected["result"]
    assert set(headers) == set(full_headers)
    for name in ("content-type", "allow", "x-content-type-options", "referrer-policy"):
        assert headers[name] == full_headers[name]

    # Each recorded through the journal and counted, the loop's as the others.
    assert journal.journal_drain() == 3
    recorded = QueryRequest.objects.get(id=body["requestId"])
    assert (recorded.outcome, recorded.job_id, recorded.api_key_id) == ("cached", job.id, row.id)
    assert recorded.query == " what is 2+2? "
    assert int(redis_client().hget("metrics:counters", "claude_cache_hits_total")) == 3


def test_what_the_loop_cannot_answer_goes_to_the_thread_or_the_full_path(cached):
    row, key, _ = cached
    app = GatewayASGIHandler()
    assert asgi_post(app, {"query": QUERY}, key=key)[0] == 200  # the key is held from now on
    # A miss: the full path makes a job, nothing recorded by the loop.
    with full_path_calls() as full:
        status, _, reply = asgi_post(app, {"query": "never asked before"}, key=key)
    assert status == 202 and full.call_count == 1 and reply["jobId"]
    # A body the fast paths do not take: the full path's 400, from the same body.
    status, _, reply = asgi_post(app, {"query": QUERY, "extra": 1}, key=key)
    assert status == 400 and reply["error"]["type"] == "invalid_request_error"
    # A key due to be marked used: the thread writes last_used_at, then answers.
    held = auth._cached_keys[ApiKey.hash_key(key)][2]
    held.last_used_at -= auth.LAST_USED_RESOLUTION * 2
    with thread_calls() as thread:
        app.wsgi.fast_paths = {("POST", "/api/query"): hits.cache_hit_response}
        assert asgi_post(app, {"query": QUERY}, key=key)[0] == 200
    assert thread.call_count == 1
    assert ApiKey.objects.get(pk=row.pk).last_used_at == held.last_used_at
    # Routing rules due for reloading from the database: the thread too.
    with mock.patch("routing.services._cache._loaded_at", float("-inf")), thread_calls() as thread:
        app.wsgi.fast_paths = {("POST", "/api/query"): hits.cache_hit_response}
        assert asgi_post(app, {"query": QUERY}, key=key)[0] == 200
    assert thread.call_count == 1
    assert journal.journal_drain() == 3


def test_a_key_revoked_elsewhere_is_refused_by_the_full_path(cached):
    row, key, _ = cached
    app = GatewayASGIHandler()
    assert asgi_post(app, {"query": QUERY}, key=key)[0] == 200
    answered_on_loop(app, {"query": QUERY}, key)
    # Another process revokes it: the version moves on, this process still holds the row.
    ApiKey.objects.filter(pk=row.pk).update(is_active=False)
    redis_client().incr(auth.KEYS_VERSION_KEY)
    status, _, reply = asgi_post(app, {"query": QUERY}, key=key)
    assert status == 401 and reply["error"]["type"] == "authentication_error"
    assert journal.journal_drain() == 2


def test_redis_down_on_the_loop_is_the_full_paths_503(cached, settings):
    _, key, _ = cached
    app = GatewayASGIHandler()
    assert asgi_post(app, {"query": QUERY}, key=key)[0] == 200
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        }
    }
    with loop_calls() as on_loop:
        status, _, reply = asgi_post(app, {"query": QUERY}, key=key)
    assert on_loop.call_count == 1
    assert status == 503 and reply["error"]["type"] == "overloaded_error"


def test_a_script_redis_forgot_is_sent_whole(cached, monkeypatch):
    _, key, job = cached
    app = GatewayASGIHandler()
    assert asgi_post(app, {"query": QUERY}, key=key)[0] == 200
    monkeypatch.setattr(journal, "_HIT_SCRIPT_SHA", "0" * 40)  # as after a restart: NOSCRIPT
    status, _, body = answered_on_loop(app, {"query": QUERY}, key)
    assert status == 200 and body["jobId"] == str(job.id)
    assert journal.journal_drain() == 2


# --- the loop's Redis connection ---------------------------------------------------------------------


def test_replies_are_parsed_across_reads_and_in_order():
    frames = b"$3\r\nabc\r\n$-1\r\n:0\r\n+OK\r\n-NOSCRIPT x\r\n-ERR y\r\n*2\r\n$1\r\na\r\n:5\r\n"
    values, start = [], 0
    while start < len(frames):
        value, start = _parse(frames, start)
        values.append(value)
    assert values[:4] == [b"abc", None, 0, b"OK"] and values[6] == [b"a", 5]
    assert isinstance(values[4], NoScriptError) and type(values[5]) is ResponseError
    for cut in range(1, len(b"$3\r\nabc\r\n")):
        assert _parse(b"$3\r\nabc\r\n"[:cut], 0)[1] == 0  # incomplete: wait for more


def test_commands_in_flight_share_one_connection_and_a_lost_one_is_reconnected(redis_db):
    from django.conf import settings

    async def run() -> None:
        client = LoopRedis(settings.REDIS_URL, connect_timeout=1, timeout=5)
        await client.execute("SET", "loop:test", "v")
        replies = await asyncio.gather(*(client.execute("INCR", "loop:n") for _ in range(50)))
        assert sorted(replies) == list(range(1, 51))
        assert await client.execute("GET", "loop:test") == b"v"
        with pytest.raises(ResponseError):
            await client.execute("INCR", "loop:test")
        client.close()  # as if the connection dropped: the next command connects again
        assert await client.execute("GET", "loop:n") == b"50"
        client.close()

    asyncio.run(run())


def test_a_refused_connection_and_a_silent_server_fail_as_the_sync_client_does():
    async def run() -> None:
        refused = LoopRedis("redis://127.0.0.1:1/0", connect_timeout=0.5, timeout=0.5)
        with pytest.raises(ConnectionError):
            await refused.execute("GET", "x")

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            await asyncio.sleep(5)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = LoopRedis(f"redis://127.0.0.1:{port}", connect_timeout=0.5, timeout=0.2)
        with pytest.raises(TimeoutError):
            await client.execute("GET", "x")
        server.close()

    asyncio.run(run())
