"""The cache-hit path ahead of Django (queries/hits.py) and the request journal (queries/services/journal.py).

Requests go through the WSGI application that gunicorn serves (core.handlers), so the fast path is
taken exactly as in production; Django's test client, which never takes it, gives the full path's
answer to compare with.
"""

from __future__ import annotations

import json
import threading
from unittest import mock

import pytest
from django.test import RequestFactory
from django.utils import timezone

from core.redis import redis_client
from gateway_project.wsgi import application
from queries import api, auth, services
from queries.models import ApiKey, Job, QueryRequest
from queries.services import journal
from routing.services import route_query

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_db")]

QUERY = "What is 2+2?"


def wsgi_post(body: object, *, key: str | None, content_type: str = "application/json", **headers: str):
    """POST /api/query through the WSGI application; returns (status code, headers, parsed body)."""
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    if key is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    environ = RequestFactory().post("/api/query", data=raw, content_type=content_type, **headers).environ
    replies = []
    chunks = application(environ, lambda status, response_headers: replies.append((status, response_headers)))
    content = b"".join(chunks)
    getattr(chunks, "close", lambda: None)()
    status, response_headers = replies[0]
    return int(status.split()[0]), dict(response_headers), json.loads(content)


@pytest.fixture
def cached(api_key):
    """An answer in the cache for QUERY, for the api_key fixture's key; returns (key row, key, job)."""
    return cache_entry(api_key)


def cache_entry(api_key):
    row, key = api_key
    route = route_query(query=QUERY)
    digest = services.query_hash(
        normalized=services.normalize_query(QUERY),
        model=None,
        servers=route.server_names,
        scope=auth.cache_scope(api_key=row),
    )
    job = Job.objects.create(
        hash=digest,
        query=QUERY,
        normalized_query=QUERY,
        state=Job.State.COMPLETED,
        response="4",
        finished_at=timezone.now(),
    )
    QueryRequest.objects.create(api_key=row, job=job, query=QUERY, hash=digest, outcome="queued")
    services.cache_put(job=job)
    return row, key, job


def full_path_calls():
    return mock.patch.object(api.QueryCreateApi, "post", autospec=True, side_effect=api.QueryCreateApi.post)


def test_a_plain_cache_hit_is_answered_ahead_of_django_as_the_full_path_answers_it(cached):
    row, key, job = cached
    with full_path_calls() as full:
        status, headers, body = wsgi_post({"query": " what is 2+2? "}, key=key)
    assert full.call_count == 0
    assert status == 200
    assert body["requestId"] == headers["X-Request-ID"]
    assert (body["jobId"], body["status"], body["cached"]) == (str(job.id), "completed", True)
    assert body["result"]["response"] == "4"

    # The same request with the fast path declining: Django's handler, the API's middleware, DRF.
    with mock.patch.object(services, "query_cache_answer", autospec=True, return_value=None):
        with full_path_calls() as full:
            status, reference_headers, expected = wsgi_post({"query": QUERY}, key=key)
    assert full.call_count == 1 and status == 200
    assert list(body) == list(expected) and body["result"] == expected["result"]
    assert set(headers) == set(reference_headers)
    for name in (
        "Content-Type",
        "Allow",
        "X-Content-Type-Options",
        "Referrer-Policy",
        "Cross-Origin-Opener-Policy",
    ):
        assert headers[name] == reference_headers[name]

    # Recorded through the journal like the full path's hit: a row each, with the ids clients got.
    assert QueryRequest.objects.filter(outcome="cached").count() == 0
    assert journal.journal_drain() == 2
    recorded = QueryRequest.objects.get(id=body["requestId"])
    assert (recorded.outcome, recorded.job_id, recorded.api_key_id) == ("cached", job.id, row.id)
    assert QueryRequest.objects.filter(id=expected["requestId"], outcome="cached").exists()
    assert int(redis_client().hget("metrics:counters", "claude_cache_hits_total")) == 2


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ({"query": "something never asked"}, "application/json", 202),  # a miss: a new job
        ({"query": QUERY, "noCache": True}, "application/json", 202),
        ({"query": QUERY, "metadata": {"team": "a"}}, "application/json", 200),
        ({"query": QUERY, "webhookUrl": "http://127.0.0.1/hook"}, "application/json", 400),
        ({"query": QUERY, "priority": "urgent"}, "application/json", 400),
        ({"query": QUERY, "model": "--dangerously-skip-permissions"}, "application/json", 400),
        ({"query": QUERY, "extra": 1}, "application/json", 400),
        ({"query": "   "}, "application/json", 400),
        ('{"query": "What is 2+2?"', "application/json", 400),
        ('{"query": NaN}', "application/json", 400),
        ("query=What+is+2%2B2%3F", "application/x-www-form-urlencoded", 415),
    ],
)
def test_what_the_fast_path_declines_gets_the_full_paths_answer_with_its_body(
    cached, body, content_type, status
):
    _, key, _ = cached
    with full_path_calls() as full:
        code, _, reply = wsgi_post(body, key=key, content_type=content_type)
    assert code == status, reply
    if status < 400:
        assert full.call_count == 1  # the full path read the same body
    else:
        assert reply["error"]["type"] in ("invalid_request_error",)


def test_keys_the_fast_path_cannot_judge_go_to_the_full_path(cached):
    row, key, _ = cached
    assert wsgi_post({"query": QUERY}, key=None)[0] == 401
    assert wsgi_post({"query": QUERY}, key="cgw_" + "x" * 43)[0] == 401
    ApiKey.objects.filter(pk=row.pk).update(allowed_priorities=["low"])
    auth.api_keys_changed()
    code, _, reply = wsgi_post({"query": QUERY}, key=key)
    assert code == 403 and reply["error"]["details"]["reason"] == "priority_not_allowed"
    # A rate limit's slot is taken by the full path, which then answers from the cache.
    ApiKey.objects.filter(pk=row.pk).update(allowed_priorities=[], rate_limit_per_minute=1)
    auth.api_keys_changed()
    with full_path_calls() as full:
        assert wsgi_post({"query": QUERY}, key=key)[0] == 200
        assert full.call_count == 1
        assert wsgi_post({"query": QUERY}, key=key)[0] == 429  # refused by DRF's throttle, before post()


def test_a_key_revoked_elsewhere_is_refused_at_once_on_the_fast_path(cached):
    row, key, _ = cached
    assert wsgi_post({"query": QUERY}, key=key)[0] == 200  # the key is now held by this process
    # Another process revokes it: the shared version moves on, this process is not told.
    ApiKey.objects.filter(pk=row.pk).update(is_active=False)
    redis_client().incr(auth.KEYS_VERSION_KEY)
    code, _, reply = wsgi_post({"query": QUERY}, key=key)
    assert code == 401 and reply["error"]["type"] == "authentication_error"
    assert journal.journal_drain() == 1  # only the first request was answered and journaled


def test_an_error_on_the_fast_path_hands_the_request_on_intact(cached):
    _, key, job = cached
    with mock.patch.object(services, "query_cache_answer", autospec=True, side_effect=RuntimeError("boom")):
        code, _, reply = wsgi_post({"query": QUERY}, key=key)
    assert code == 200 and reply["cached"] is True and reply["jobId"] == str(job.id)


def test_redis_down_on_the_fast_path_is_the_full_paths_503(cached, settings):
    _, key, _ = cached
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        }
    }
    code, _, reply = wsgi_post({"query": QUERY}, key=key)
    assert code == 503 and reply["error"]["type"] == "overloaded_error"


# --- the journal ------------------------------------------------------------------------------------------


def test_an_entry_a_dead_recorder_left_is_claimed_and_written_once(cached, monkeypatch):
    _, key, _ = cached
    request_id = wsgi_post({"query": QUERY}, key=key)[2]["requestId"]
    redis = redis_client()
    journal._group_ensure(redis)
    # A recorder reads the entry, then dies before writing it.
    assert len(redis.xreadgroup(journal.GROUP, "gone:1", {journal.STREAM_KEY: ">"}, count=10)[0][1]) == 1
    assert journal.journal_drain(consumer="alive:2") == 0  # not idle long enough to be taken over
    monkeypatch.setattr(journal, "JOURNAL_CLAIM_IDLE_MS", 0)
    assert journal.journal_drain(consumer="alive:2") == 1
    assert QueryRequest.objects.filter(id=request_id).count() == 1
    assert (
        redis.xlen(journal.STREAM_KEY) == 0
        and redis.xpending(journal.STREAM_KEY, journal.GROUP)["pending"] == 0
    )


def test_the_web_records_the_journal_only_while_no_worker_is_alive(cached):
    from queries.worker import GatewayWorker

    assert journal.web_records()  # no worker: the web's recorders write the journal
    worker = GatewayWorker(["default"], connection=redis_client(), name="recording-worker")
    worker.register_birth()
    assert not journal.web_records()  # its own recorder does (tests/test_e2e.py)
    worker.register_death()
    assert journal.web_records()


def test_a_drain_ends_between_batches_once_its_recorder_is_stopping(cached, monkeypatch):
    _, key, _ = cached
    for _ in range(3):
        wsgi_post({"query": QUERY}, key=key)
    stopping = threading.Event()
    flush = journal.journal_flush

    def one_then_stop(*, consumer):
        handled = flush(consumer=consumer, count=1)
        stopping.set()  # the worker stops while the first batch is written
        return handled

    monkeypatch.setattr(journal, "journal_flush", one_then_stop)
    assert journal.journal_drain(consumer="worker:1", stopping=stopping) == 1
    assert QueryRequest.objects.filter(outcome="cached").count() == 1
    assert redis_client().xlen(journal.STREAM_KEY) == 2


def test_an_entry_delivered_twice_is_one_row(cached):
    _, key, _ = cached
    request_id = wsgi_post({"query": QUERY}, key=key)[2]["requestId"]
    entry = redis_client().xrange(journal.STREAM_KEY)[0][1]
    redis_client().xadd(journal.STREAM_KEY, entry)
    assert journal.journal_drain() == 2
    assert QueryRequest.objects.filter(id=request_id).count() == 1


def test_an_unreadable_entry_does_not_hold_up_the_others(cached):
    _, key, _ = cached
    redis_client().xadd(journal.STREAM_KEY, {"r": "{not json"})
    request_id = wsgi_post({"query": QUERY}, key=key)[2]["requestId"]
    assert journal.journal_drain() == 2
    assert QueryRequest.objects.filter(id=request_id).exists()
    assert redis_client().xlen(journal.STREAM_KEY) == 0


def test_the_backlog_is_on_metrics(cached):
    from prometheus_client.parser import text_string_to_metric_families

    from core.metrics import metrics_text

    def gauges() -> dict[str, float]:
        families = text_string_to_metric_families(metrics_text().decode())
        return {f.name: f.samples[0].value for f in families if f.name.startswith("claude_request_journal")}

    _, key, _ = cached
    wsgi_post({"query": QUERY}, key=key)
    backlog = gauges()
    assert backlog["claude_request_journal_pending"] == 1
    assert 0 < backlog["claude_request_journal_oldest_seconds"] < 5
    journal.journal_drain()
    assert gauges() == {"claude_request_journal_pending": 0, "claude_request_journal_oldest_seconds": 0}
