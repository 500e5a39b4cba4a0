"""The paths bench/ measures, kept lean: database round trips per request, the API key cache, queues.

Cache hits and submissions are what a busy gateway serves most; each database round trip on them is
paid on every request. These tests pin the number down, so a change that adds one is noticed.
"""

from __future__ import annotations

import time
from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from core.redis import redis_client
from queries import auth, services
from queries.models import ApiKey, Job, QueryRequest
from queries.services import journal, run
from tests.support.pipeline import run_queued_jobs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_db")]


def post(client: APIClient, query: str):
    return client.post("/api/query", {"query": query}, format="json")


def sql_of(ctx: CaptureQueriesContext) -> list[str]:
    return [q["sql"].split(" (")[0].split(" WHERE")[0] for q in ctx.captured_queries]


@pytest.fixture
def answered(client, fake_claude, settings):
    """A query answered once (so the next identical one is a cache hit), and the key looked up once."""
    # Routing rules are read again once a second, whatever the traffic: not per request.
    settings.ROUTING_REFRESH_SECONDS = 3600
    fake_claude("ok")
    assert post(client, "What is 2+2?").status_code == 202
    run_queued_jobs()
    return client


def test_a_cache_hit_costs_no_database_round_trip(answered):
    with CaptureQueriesContext(connection) as ctx:
        response = post(answered, "what is 2+2?")
    assert response.status_code == 200 and response.json()["cached"] is True
    # The request is journaled in Redis with the lookup; the key comes from the process's cache, and
    # there is no connection health check.
    assert sql_of(ctx) == []
    assert journal.journal_drain() == 1
    assert QueryRequest.objects.get(id=response.json()["requestId"]).outcome == "cached"


def test_a_cache_hit_written_in_the_request_costs_one_round_trip(answered, settings):
    settings.CACHE_HIT_JOURNAL = False
    with CaptureQueriesContext(connection) as ctx:
        response = post(answered, "what is 2+2?")
    assert response.status_code == 200 and response.json()["cached"] is True
    assert sql_of(ctx) == ['INSERT INTO "queries_queryrequest"']


def test_a_new_submission_costs_two_round_trips(answered):
    with CaptureQueriesContext(connection) as ctx:
        response = post(answered, "something new")
    assert response.status_code == 202
    assert sql_of(ctx) == ['INSERT INTO "queries_job"', 'INSERT INTO "queries_queryrequest"']


def test_a_revoked_key_is_refused_at_once_by_every_process(client, api_key):
    assert post(client, "first").status_code == 202  # the key is now cached in this process
    # Another process revokes it (services.api_key_revoke): the shared version moves on.
    ApiKey.objects.filter(pk=api_key[0].pk).update(is_active=False)
    redis_client().incr(auth.KEYS_VERSION_KEY)
    assert post(client, "second").status_code == 401


def test_revoking_a_key_through_the_service_refuses_it_at_once(client, api_key):
    assert post(client, "first").status_code == 202
    assert services.api_key_revoke(api_key=api_key[0])
    assert post(client, "second").status_code == 401


def test_a_key_saved_in_this_process_is_read_again(client, api_key):
    assert post(client, "first").status_code == 202
    row = ApiKey.objects.get(pk=api_key[0].pk)
    row.is_active = False
    row.save()
    assert post(client, "second").status_code == 401


def test_a_change_that_announces_nothing_is_seen_after_the_cache_time(client, api_key, settings):
    settings.API_KEY_CACHE_SECONDS = 0.3
    assert post(client, "first").status_code == 202
    ApiKey.objects.filter(pk=api_key[0].pk).update(is_active=False)  # no signal, no version bump
    assert post(client, "second").status_code == 202
    time.sleep(0.4)
    assert post(client, "third").status_code == 401


def test_with_the_key_cache_off_every_request_reads_the_key(client, settings):
    settings.API_KEY_CACHE_SECONDS = 0
    post(client, "first")
    with CaptureQueriesContext(connection) as ctx:
        post(client, "second")
    assert sql_of(ctx)[0].startswith('SELECT "queries_apikey"')


def test_unknown_keys_are_not_cached():
    before = dict(auth._cached_keys)
    for _ in range(3):
        assert auth.api_key_lookup("cgw_" + "x" * 43) is None
    assert auth._cached_keys == before


def test_queues_are_created_once_per_process(fake_claude):
    run._queues.clear()
    with mock.patch("django_rq.get_queue", wraps=__import__("django_rq").get_queue) as get_queue:
        for i in range(3):
            services.query_submit(api_key=None, query=f"queued {i}")
    assert get_queue.call_count == 1
    assert Job.objects.count() == 3
