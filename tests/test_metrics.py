"""/metrics: the contract's counters where outcomes become known, read back from Redis at scrape time."""

from __future__ import annotations

import importlib
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.db.models import Sum
from django.test import Client
from django.urls import clear_url_caches
from redis import Redis

from core import metrics
from core.redis import redis_client
from queries.models import Job, QueryRequest
from queries.services import journal
from tests.support.metrics import Samples, parse_samples, promtool_check, value
from tests.support.pipeline import run_queued_jobs
from tests.support.processes import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_db")]


def scrape(client: Client | None = None) -> Samples:
    response = (client or Client()).get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return parse_samples(response.content.decode())


def post(client, body: dict):
    return client.post("/api/query", body, format="json")


def test_every_outcome_is_counted_once_and_matches_the_database(client, real_claude):
    assert post(client, {"query": "What is 2+2?"}).status_code == 202  # miss, new job
    assert run_queued_jobs() == 1
    assert post(client, {"query": " what is 2+2? "}).status_code == 200  # hit
    assert post(client, {"query": "[[mock:error=400]] fail please"}).status_code == 202  # miss
    first = post(client, {"query": "[[mock:text=shared]] once"})  # miss
    joined = post(client, {"query": "[[mock:text=shared]]   ONCE"})  # miss, then a dedup join
    assert joined.json()["deduplicated"] is True and joined.json()["jobId"] == first.json()["jobId"]
    assert post(client, {"query": "What is 2+2?", "noCache": True}).status_code == 202  # no lookup
    assert run_queued_jobs() == 3
    assert journal.journal_drain() == 1  # the cache hit's row

    samples = scrape()
    assert value(samples, "claude_jobs_completed_total") == 3
    assert value(samples, "claude_jobs_failed_total", reason="cli_error") == 1
    assert value(samples, "claude_jobs_failed_total", reason="cli_timeout") == 0
    assert value(samples, "claude_cache_hits_total") == 1
    assert value(samples, "claude_cache_misses_total") == 4
    assert value(samples, "claude_dedup_hits_total") == 1
    assert value(samples, "claude_execution_duration_seconds_count") == 4
    assert value(samples, "claude_execution_duration_seconds_bucket", le="+Inf") == 4
    assert value(samples, "claude_cli_processes_running") == 0

    # The same numbers as the database, which is the record.
    assert value(samples, "claude_jobs_completed_total") == Job.objects.filter(state="completed").count()
    assert value(samples, "claude_cache_hits_total") == QueryRequest.objects.filter(outcome="cached").count()
    assert (
        value(samples, "claude_dedup_hits_total")
        == QueryRequest.objects.filter(outcome="deduplicated").count()
    )
    sums = Job.objects.aggregate(
        cost=Sum("cost_usd"),
        input=Sum("input_tokens"),
        output=Sum("output_tokens"),
        cache_read=Sum("cache_read_input_tokens"),
        cache_creation=Sum("cache_creation_input_tokens"),
    )
    assert sums["cost"] > 0 and sums["input"] > 0
    assert value(samples, "claude_cost_usd_total") == pytest.approx(float(sums["cost"]), abs=1e-9)
    for kind in ("input", "output", "cache_read", "cache_creation"):
        assert value(samples, "claude_tokens_total", type=kind) == (sums[kind] or 0)
    durations = [j.duration_ms for j in Job.objects.exclude(exit_code=None)]
    assert len(durations) == 4
    assert value(samples, "claude_execution_duration_seconds_sum") >= sum(durations) / 1000 * 0.5


def test_a_job_that_fails_in_the_web_is_counted_too(client, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from queries.services import submit

    def refuse(*, job):
        raise RedisConnectionError("queue down")

    monkeypatch.setattr(submit, "job_enqueue", refuse)
    assert post(client, {"query": "hello"}).status_code == 503
    assert value(scrape(), "claude_jobs_failed_total", reason="queue_unavailable") == 1


def test_warm_run_durations_have_buckets_of_their_own_below_a_second():
    assert metrics.DURATION_BUCKETS[0] == 0.05 and metrics.DURATION_BUCKETS[-1] == 600.0
    job = Job(cost_usd=Decimal("0"), input_tokens=1, output_tokens=1)
    for duration in (0.04, 0.07, 0.09, 0.12, 0.55):  # warm runs take 0.07-0.1 s, cold ones ~0.5 s
        metrics.cli_run_observed(job=job, outcome=SimpleNamespace(pid=1, duration=duration))
    samples = scrape()
    cumulative = {
        le: value(samples, "claude_execution_duration_seconds_bucket", le=le)
        for le in ("0.05", "0.075", "0.1", "0.15", "0.5", "0.75", "+Inf")
    }
    assert cumulative == {"0.05": 1, "0.075": 2, "0.1": 3, "0.15": 4, "0.5": 4, "0.75": 5, "+Inf": 5}


def test_duration_lands_in_the_right_bucket_and_cost_adds_up():
    job = Job(cost_usd=Decimal("0.25"), input_tokens=10, output_tokens=3)

    class Outcome:
        pid = 1234
        duration = 4.2

    metrics.cli_run_observed(job=job, outcome=Outcome())
    Outcome.duration = 900.0  # beyond the last bound: +Inf only
    metrics.cli_run_observed(job=job, outcome=Outcome())
    samples = scrape()
    bucket = {le: value(samples, "claude_execution_duration_seconds_bucket", le=le) for le in ("3.0", "5.0")}
    assert bucket == {"3.0": 0, "5.0": 1}
    assert value(samples, "claude_execution_duration_seconds_bucket", le="600.0") == 1
    assert value(samples, "claude_execution_duration_seconds_bucket", le="+Inf") == 2
    assert value(samples, "claude_execution_duration_seconds_sum") == pytest.approx(904.2)
    assert value(samples, "claude_cost_usd_total") == pytest.approx(0.5)
    assert value(samples, "claude_tokens_total", type="input") == 20

    class NeverStarted:
        pid = None
        duration = 0.01

    metrics.cli_run_observed(job=job, outcome=NeverStarted())
    assert value(scrape(), "claude_execution_duration_seconds_count") == 2


def test_webhook_outcomes_are_labelled_and_free_text_cannot_make_series():
    metrics.webhook_delivery_counted("delivered")
    metrics.webhook_delivery_counted("delivered")
    metrics.webhook_delivery_counted("failed")
    metrics.webhook_delivery_counted("some text with spaces and {braces}")
    samples = scrape()
    assert value(samples, "claude_webhook_deliveries_total", outcome="delivered") == 2
    assert value(samples, "claude_webhook_deliveries_total", outcome="failed") == 1
    assert value(samples, "claude_webhook_deliveries_total", outcome="unknown") == 1


def test_queue_size_is_read_from_rq_at_scrape_time(client):
    for i in range(3):
        post(client, {"query": f"normal {i}"})
    post(client, {"query": "urgent", "priority": "high"})
    samples = scrape()
    assert value(samples, "claude_queue_size", queue="default", state="queued") == 3
    assert value(samples, "claude_queue_size", queue="high", state="queued") == 1
    assert value(samples, "claude_queue_size", queue="low", state="queued") == 0
    for state in ("started", "failed", "deferred", "scheduled"):
        assert value(samples, "claude_queue_size", queue="default", state=state) == 0
    run_queued_jobs_with_missing_cli()
    assert value(scrape(), "claude_queue_size", queue="default", state="queued") == 0


def run_queued_jobs_with_missing_cli() -> None:
    from django.conf import settings

    previous = settings.CLAUDE_BIN
    settings.CLAUDE_BIN = "/nonexistent/claude"
    try:
        run_queued_jobs()
    finally:
        settings.CLAUDE_BIN = previous


def test_running_cli_marks_expire_and_are_cleared_when_the_job_ends():
    import time

    metrics.cli_started(job_id="a", expected_end=time.time() + 60)
    metrics.cli_started(job_id="b", expected_end=time.time() + 60)
    metrics.cli_started(job_id="killed", expected_end=time.time() - 1)  # its work horse died long ago
    assert value(scrape(), "claude_cli_processes_running") == 2
    metrics.job_finished_counted(job=Job(id="00000000-0000-0000-0000-00000000000a", state="completed"))
    metrics.cli_stopped(job_id="a")
    assert value(scrape(), "claude_cli_processes_running") == 1


def test_metrics_token_is_required_when_set(settings):
    settings.METRICS_TOKEN = "scrape-token-123"
    client = Client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic scrape-token-123").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-123").status_code == 200


def test_metrics_disabled_counts_nothing_and_serves_no_endpoint(settings):
    import gateway_project.urls

    settings.METRICS_ENABLED = False
    metrics.webhook_delivery_counted("delivered")
    metrics.cache_miss_counted()
    metrics.cli_started(job_id="x", expected_end=2e9)
    assert redis_client().keys("metrics:*") == []
    try:
        importlib.reload(gateway_project.urls)
        clear_url_caches()
        assert Client().get("/metrics").status_code == 404
    finally:
        settings.METRICS_ENABLED = True
        importlib.reload(gateway_project.urls)
        clear_url_caches()
    assert Client().get("/metrics").status_code == 200


def test_an_unreachable_redis_gives_gaps_not_zeros(monkeypatch):
    dead = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    monkeypatch.setattr(metrics, "redis_client", lambda: dead)
    samples = scrape()
    assert value(samples, "claude_metrics_store_up") == 0
    assert value(samples, "claude_jobs_completed_total") is None
    # Recording while Redis is down is logged, never raised into the pipeline.
    metrics.job_finished_counted(job=Job(state="completed"))


def test_the_exposition_passes_promtool(client, real_claude):
    post(client, {"query": "What is 2+2?"})
    run_queued_jobs()
    post(client, {"query": "What is 2+2?"})
    metrics.webhook_delivery_counted("delivered")
    text = Client().get("/metrics").content.decode()
    assert "django_http_requests_total_by_view_transport_method_total" in text
    assert "django_db_execute_total" in text  # the instrumented database backend
    promtool_check(text)
