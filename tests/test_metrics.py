"""/metrics: the contract's counters where outcomes become known, read back from Redis at scrape time."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from django.db.models import Sum
from django.test import Client
from django.urls import clear_url_caches
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from core import metrics, multiprocess
from core.redis import redis_client
from queries.models import Job, QueryRequest
from queries.services import journal
from tests.conftest import run_queued_jobs

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def scrape(client: Client | None = None) -> Samples:
    response = (client or Client()).get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return parse_samples(response.content.decode())


def promtool_check(text: str) -> None:
    """``promtool check metrics``: the exposition is valid and follows Prometheus's naming rules."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs the Debian package prometheus")
        pytest.skip("promtool is not installed (the Debian package prometheus; .ci/run installs it)")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


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
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    dead = Redis(host="127.0.0.1", port=closed_port, socket_connect_timeout=0.5)
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


# --- multiprocess files (the web's django-prometheus metrics) ---------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from prometheus_client import Counter, Gauge, Histogram
    n = int(sys.argv[1])
    Counter("demo_requests", "demo", ["view"]).labels(view="a").inc(n)
    Histogram("demo_latency_seconds", "demo", buckets=(0.1, 1.0)).observe(0.5 * n)
    Gauge("demo_in_flight", "demo", multiprocess_mode="livesum").set(1)
    Gauge("demo_applied", "demo").set(n)
    """
)


def run_writer(directory: Path, n: int) -> int:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    proc = subprocess.run([sys.executable, "-c", _WRITER, str(n)], env=env, check=True)
    assert proc.returncode == 0
    return _last_pid(directory)


def _last_pid(directory: Path) -> int:
    pids = {int(p.stem.rsplit("_", 1)[1]) for p in directory.glob("counter_*.db") if "archive" not in p.stem}
    return max(pids, key=lambda pid: (directory / f"counter_{pid}.db").stat().st_mtime_ns)


def collect(directory: Path) -> Samples:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return parse_samples(generate_latest(registry).decode())


def test_dead_processes_files_are_folded_into_one_archive(tmp_path):
    directory = tmp_path / "prom"
    multiprocess.prepare(directory)
    pids = [run_writer(directory, n) for n in (1, 2, 3, 4)]
    before = collect(directory)
    assert value(before, "demo_requests_total", view="a") == 10
    assert value(before, "demo_latency_seconds_count") == 4

    for pid in pids[:3]:
        multiprocess.process_exited(pid, directory)
    after = collect(directory)
    for name, labels in [
        ("demo_requests_total", {"view": "a"}),
        ("demo_latency_seconds_count", {}),
        ("demo_latency_seconds_sum", {}),
        ("demo_latency_seconds_bucket", {"le": "1.0"}),
        ("demo_latency_seconds_bucket", {"le": "+Inf"}),
    ]:
        assert value(after, name, **labels) == value(before, name, **labels), name
    # Gauges of dead processes are dropped; the live one (pid 4) stays.
    assert value(after, "demo_in_flight") == 1
    assert {labels for (name, labels) in after if name == "demo_applied"} == {(("pid", str(pids[3])),)}
    names = sorted(p.name for p in directory.glob("*.db"))
    assert names == sorted(
        [
            "counter_archive.db",
            "histogram_archive.db",
            f"counter_{pids[3]}.db",
            f"histogram_{pids[3]}.db",
            f"gauge_livesum_{pids[3]}.db",
            f"gauge_all_{pids[3]}.db",
        ]
    )

    multiprocess.process_exited(pids[3], directory)
    assert value(collect(directory), "demo_requests_total", view="a") == 10
    assert sorted(p.name for p in directory.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]

    multiprocess.prepare(directory)  # a new server starts from zero, as its processes do
    assert list(directory.glob("*.db")) == []


def test_a_worker_reaped_while_another_is_folded_waits_for_it_instead_of_deadlocking(tmp_path, monkeypatch):
    """gunicorn's SIGCHLD handler can run child_exit inside a child_exit that holds the lock."""
    import threading

    directory = tmp_path / "prom"
    multiprocess.prepare(directory)
    pids = [run_writer(directory, n) for n in (1, 2)]
    before = collect(directory)
    real_fold = multiprocess._fold
    nested = []

    def fold_interrupted(pid, path):
        with multiprocess.lock(path, shared=False):
            if not nested:  # the second worker's exit arrives while the first's files are folded
                nested.append(pid)
                multiprocess.process_exited(pids[1], directory)
        real_fold(pid, path)

    monkeypatch.setattr(multiprocess, "_fold", fold_interrupted)
    done = threading.Thread(target=multiprocess.process_exited, args=(pids[0], directory), daemon=True)
    done.start()
    done.join(10)
    assert not done.is_alive(), "process_exited deadlocked on its own lock"
    assert value(collect(directory), "demo_requests_total", view="a") == value(
        before, "demo_requests_total", view="a"
    )
    assert sorted(p.name for p in directory.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]
