"""The dashboard's figures equal what the database and Redis hold, on the admin index and in gateway_stats."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import django_rq
import pytest
import time_machine
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from rq import Worker

from console.charts import axis_ticks
from core.redis import redis_client
from queries.models import Job, QueryRequest
from queries.quotas import api_key_month_spend
from queries.services import dashboard_figures
from queries.services.stats import run_time_figures
from tests.support.factories import ApiKeyFactory, JobFactory, RequestFactory, backdate, failed_job

# Transactional: django-rq enqueues when the transaction commits.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_db")]

T0 = datetime(2030, 1, 7, 12, 30, tzinfo=UTC)


@pytest.fixture
def frozen():
    with time_machine.travel(T0, tick=False):
        yield


@pytest.fixture
def seeded_history(frozen) -> dict:
    """Jobs, requests, queue entries, workers and cache entries with known counts."""
    h = timedelta(hours=1)
    completed = [
        JobFactory(finished_at=T0 - 0.2 * h, cost_usd=Decimal("0.010000")),
        JobFactory(finished_at=T0 - 0.1 * h, cost_usd=Decimal("0.020000")),
        JobFactory(finished_at=T0 - 3 * h, cost_usd=Decimal("0.500000")),
        JobFactory(finished_at=T0 - 25 * h, cost_usd=Decimal("0.004000")),  # yesterday, outside 24 h
        JobFactory(finished_at=T0 - 72 * h, cost_usd=Decimal("1.250000")),
        JobFactory(finished_at=T0 - 20 * 24 * h, cost_usd=Decimal("9.000000")),  # outside 14 days
    ]
    failed = [
        failed_job(finished_at=T0 - 0.3 * h, error_type="cli_error", error_message="API Error: 400"),
        failed_job(finished_at=T0 - 23 * h, error_type="cli_timeout", error_message="too slow"),
    ]
    cancelled = failed_job(state=Job.State.CANCELLED, error_type="cancelled", finished_at=T0 - 3 * h)
    JobFactory(state=Job.State.QUEUED, finished_at=None, progress=0)
    JobFactory(state=Job.State.RUNNING, finished_at=None, progress=10)

    job = completed[0]
    for outcome, count in (("queued", 3), ("cached", 2), ("deduplicated", 1)):
        for _ in range(count):
            backdate(RequestFactory(job=job, outcome=outcome), T0 - 2 * h)
    for _ in range(4):
        backdate(RequestFactory(job=job, outcome="cached"), T0 - 30 * h)

    for name, count in (("high", 2), ("default", 0), ("low", 1)):
        queue = django_rq.get_queue(name)
        for i in range(count):
            queue.enqueue("queries.tasks.run_job", f"seed-{name}-{i}")
    redis = redis_client()
    idle = Worker([django_rq.get_queue("high")], connection=redis, name="seed-idle")
    idle.register_birth()
    busy = Worker([django_rq.get_queue("high")], connection=redis, name="seed-busy")
    busy.register_birth()
    busy.set_state("busy")
    for i in range(3):
        redis.set(f"claude:{i:064x}", json.dumps({"jobId": str(job.id), "result": {"response": "x" * 100}}))
    redis.set("dedup:not-a-cache-entry", "x")
    return {"failed": failed, "cancelled": cancelled}


def test_figures_equal_the_seeded_database_and_redis(seeded_history):
    f = dashboard_figures()

    assert f["generatedAt"] == "2030-01-07T12:30:00Z"
    assert f["queues"] == {
        "high": {"queued": 2, "started": 0, "failed": 0},
        "default": {"queued": 0, "started": 0, "failed": 0},
        "low": {"queued": 1, "started": 0, "failed": 0},
    }
    assert f["workers"] == {"alive": 2, "busy": 1, "names": ["seed-busy", "seed-idle"], "stale": 0}
    assert f["jobs"] == {"queued": 1, "running": 1}

    hours = f["jobsPerHour"]
    assert len(hours) == 24
    assert hours[0]["hour"] == "2030-01-06T13:00:00Z" and hours[-1]["hour"] == "2030-01-07T12:00:00Z"
    by_hour = {row["hour"]: row for row in hours}
    assert by_hour["2030-01-07T12:00:00Z"] == {
        "hour": "2030-01-07T12:00:00Z",
        "completed": 2,
        "failed": 1,
        "cancelled": 0,
    }
    assert by_hour["2030-01-07T09:00:00Z"] == {
        "hour": "2030-01-07T09:00:00Z",
        "completed": 1,
        "failed": 0,
        "cancelled": 1,
    }
    assert by_hour["2030-01-06T13:00:00Z"]["failed"] == 1
    assert sum(row["completed"] for row in hours) == 3
    assert sum(row["failed"] for row in hours) == 2
    assert sum(row["cancelled"] for row in hours) == 1

    assert f["requests"] == {
        "total": 6,
        "queued": 3,
        "cached": 2,
        "deduplicated": 1,
        "cacheHitRatio": round(2 / 6, 4),
        "runsSaved": 3,
    }

    days = {row["day"]: row for row in f["costPerDay"]}
    assert len(days) == 14 and f["costPerDay"][-1]["day"] == "2030-01-07"
    assert days["2030-01-07"] == {"day": "2030-01-07", "costUsd": "0.530000", "jobs": 3}
    assert days["2030-01-06"]["costUsd"] == "0.004000"
    assert days["2030-01-04"]["costUsd"] == "1.250000"
    assert sum(Decimal(row["costUsd"]) for row in f["costPerDay"]) == Decimal("1.784")

    failures = f["lastFailures"]
    assert [row["jobId"] for row in failures] == [str(job.id) for job in seeded_history["failed"]]
    assert failures[0]["errorType"] == "cli_error" and failures[0]["errorMessage"] == "API Error: 400"

    assert f["cache"]["entries"] == 3 and f["cache"]["memoryExact"]
    exact = sum(redis_client().memory_usage(f"claude:{i:064x}") for i in range(3))
    assert f["cache"]["memoryBytes"] == exact


def test_the_admin_index_shows_those_figures_and_charts(seeded_history):
    client = Client()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw"))
    html = client.get("/admin/").content.decode()

    def figure(name: str, within: str = html) -> str:
        match = re.search(rf'data-figure="{name}">([^<]*)<', within)
        assert match, name
        return match.group(1)

    high = re.search(r'data-queue="high">(.*?)</tr>', html, re.S).group(1)
    assert figure("queued", high) == "2" and figure("started", high) == "0"
    assert figure("workers-alive") == "2" and figure("workers-busy") == "1"
    assert figure("jobs-queued") == "1" and figure("jobs-running") == "1"
    assert figure("requests-total") == "6" and figure("cache-hit-ratio") == "33%"
    assert figure("requests-deduplicated") == "1" and figure("runs-saved") == "3"
    # The hourly chart: one bar segment per outcome and hour with jobs, values as stored.
    chart = re.search(r'id="gw-jobs-per-hour".*?</svg>', html, re.S).group(0)
    segments = re.findall(r'data-series="(\w+)" data-value="([\d.]+)"', chart)
    assert sorted(segments) == sorted(
        [("completed", "2"), ("failed", "1"), ("completed", "1"), ("cancelled", "1"), ("failed", "1")]
    )
    cost = re.search(r'id="gw-cost-per-day".*?</svg>', html, re.S).group(0)
    assert ("cost", "0.53") in re.findall(r'data-series="(\w+)" data-value="([\d.]+)"', cost)
    for job in seeded_history["failed"]:
        assert f"/admin/queries/job/{job.id}/change/" in html
    assert 'href="/admin/rq/"' in html
    assert "<script" not in html.split('id="gateway-dashboard"')[1].split("</section>")[0]


def stats_text() -> str:
    text = io.StringIO()
    call_command("gateway_stats", stdout=text)
    return text.getvalue()


def test_gateway_stats_prints_the_same_figures(seeded_history):
    out = io.StringIO()
    call_command("gateway_stats", "--json", stdout=out)
    printed, expected = json.loads(out.getvalue()), dashboard_figures()
    # The whole Redis server's memory moves with everything else that uses it; the rest must match.
    printed["cache"].pop("redisUsedMemoryBytes")
    expected["cache"].pop("redisUsedMemoryBytes")
    assert printed == expected

    printed = stats_text()
    assert "high          2      0      0" in printed
    assert "Workers: 2 alive, 1 busy" in printed
    assert "submissions 6: 3 new jobs, 2 from cache, 1 joined an identical job" in printed
    assert "cache hit ratio 33.3%; Claude runs saved 3" in printed
    assert "jobs finished: 3 completed, 2 failed, 1 cancelled" in printed
    assert "2030-01-07       $0.53  (3 jobs)" in printed
    assert "Cache: 3 answers" in printed
    assert str(seeded_history["failed"][0].id) in printed


def test_an_empty_gateway_has_zero_figures(frozen):
    f = dashboard_figures()
    assert f["requests"]["cacheHitRatio"] is None and f["requests"]["total"] == 0
    assert f["workers"]["alive"] == 0 and f["lastFailures"] == [] and f["cache"]["entries"] == 0
    assert all(not (row["completed"] or row["failed"] or row["cancelled"]) for row in f["jobsPerHour"])
    assert QueryRequest.objects.count() == 0


@pytest.fixture
def runs_and_spend(frozen) -> dict:
    """CLI runs with known run times, and keys with known spend this month."""
    s = timedelta(seconds=1)

    def run(seconds: float, finished: datetime, **fields) -> Job:
        return JobFactory(started_at=finished - seconds * s, finished_at=finished, **fields)

    late = T0 - timedelta(minutes=6)  # the 12:00 hour
    for seconds in (3, 1, 10, 2):
        run(seconds, late)
    run(4, late, state=Job.State.FAILED, error_type="cli_error", cost_usd=None)
    early = datetime(2030, 1, 7, 9, 40, tzinfo=UTC)
    run(0.07, early)
    run(0.09, early + timedelta(minutes=10))
    # Not CLI runs of the last 24 hours: answered from an identical job's cache, never started,
    # finished 25 hours ago, still running.
    run(50, late, served_from_cache=True)
    JobFactory(state=Job.State.CANCELLED, finished_at=late, started_at=None)
    run(60, T0 - timedelta(hours=25))
    JobFactory(state=Job.State.RUNNING, started_at=late, finished_at=None)

    keys = {name: ApiKeyFactory(name=name) for name in ("analytics", "support", "search", "idle")}

    def spend(key, cost: str | None, when: datetime, outcome: str = "queued") -> None:
        job = JobFactory(cost_usd=Decimal(cost) if cost else None, finished_at=when)
        backdate(RequestFactory(job=job, api_key=key, outcome=outcome), when)

    spend(keys["analytics"], "0.500000", T0 - timedelta(days=2))
    spend(keys["analytics"], "0.250000", T0 - timedelta(hours=1))
    spend(keys["analytics"], "3.000000", T0, outcome="cached")  # a cached answer costs the key nothing
    spend(keys["support"], "1.200000", datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC))
    spend(keys["search"], "5.000000", datetime(2029, 12, 31, 23, 59, tzinfo=UTC))  # last month
    spend(keys["idle"], None, T0 - timedelta(hours=1))  # running: no cost yet
    spend(None, "0.100000", T0 - timedelta(hours=3))  # manage.py gateway_query
    return keys


def test_run_time_percentiles_per_hour_from_known_runs(runs_and_spend):
    f = dashboard_figures(include_cache=False)
    hours = {row["hour"]: (row["runs"], row["p50Seconds"], row["p95Seconds"]) for row in f["runTimePerHour"]}
    assert len(f["runTimePerHour"]) == 24 and f["runTimePerHour"][-1]["hour"] == "2030-01-07T12:00:00Z"
    # 1, 2, 3, 4, 10 s: p50 the middle one; p95 at rank 0.95 × 4 = 3.8, between 4 and 10.
    assert hours["2030-01-07T12:00:00Z"] == (5, 3.0, 8.8)
    assert hours["2030-01-07T09:00:00Z"] == (2, 0.08, 0.089)
    assert hours["2030-01-07T11:00:00Z"] == (0, None, None)
    assert sum(row["runs"] for row in f["runTimePerHour"]) == 7
    # All seven: 0.07, 0.09, 1, 2, 3, 4, 10; p95 at rank 5.7, between 4 and 10.
    assert f["runTime"] == {"runs": 7, "p50Seconds": 2.0, "p95Seconds": 8.2}


def test_run_times_without_percentile_cont_are_the_same(runs_and_spend, monkeypatch):
    # SQLite has no percentile_cont: the durations are read and interpolated in Python instead.
    from django.db import connection

    expected = run_time_figures(now=T0)
    monkeypatch.setattr(connection, "vendor", "sqlite")
    assert run_time_figures(now=T0) == expected


def test_top_keys_by_this_months_cost(runs_and_spend):
    keys = runs_and_spend
    top = dashboard_figures(include_cache=False)["topKeys"]
    assert top["since"] == "2030-01-01T00:00:00Z"
    assert [(row["name"], row["costUsd"], row["jobs"]) for row in top["keys"]] == [
        ("support", "1.200000", 1),
        ("analytics", "0.750000", 2),
        ("(no key)", "0.100000", 1),
    ]
    assert top["keys"][0]["apiKeyId"] == keys["support"].pk and top["keys"][2]["apiKeyId"] is None
    assert Decimal(top["totalUsd"]) == Decimal("2.05")
    # The same figure the key's budget is checked against, and the API keys list shows.
    for row in top["keys"][:2]:
        assert Decimal(row["costUsd"]) == api_key_month_spend(api_key=row["apiKeyId"])


def test_the_dashboard_shows_run_times_top_keys_and_readable_times(runs_and_spend):
    failed_job(finished_at=T0 - timedelta(minutes=1, seconds=-5), error_message="boom")
    client = Client()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw"))
    html = client.get("/admin/").content.decode()

    assert re.search(r'data-figure="run-p50">2.00 s<', html)
    assert re.search(r'data-figure="run-p95">8.20 s<', html)
    chart = re.search(r'id="gw-run-time-per-hour".*?</svg>', html, re.S).group(0)
    assert ("p95", "8.8") in re.findall(r'data-series="(\w+)" data-value="([\d.]+)"', chart)
    # Gridlines at round steps up to the tallest bar (8.8 s): 0, 2, 4, 6, 8, 10 s.
    assert re.findall(r'data-tick="([\d.]+)">([^<]*)<', chart) == [
        ("0", "0 s"),
        ("2", "2 s"),
        ("4", "4 s"),
        ("6", "6 s"),
        ("8", "8 s"),
        ("10", "10 s"),
    ]

    top = re.search(r'id="gw-top-keys".*?</table>', html, re.S).group(0)
    assert top.index("support") < top.index("analytics") < top.index("(no key)")
    assert f"/admin/queries/apikey/{runs_and_spend['support'].pk}/change/" in top
    assert re.findall(r'data-figure="key-cost">([^<]*)<', top) == ["$1.2000", "$0.7500", "$0.1000"]
    assert "since 1 Jan 2030" in html

    # Times in the admin's format, to the second; no raw ISO.
    assert 'Figures as of <span data-figure="generated-at">7 Jan 2030, 12:30:00</span>' in html
    failures = re.search(r'id="gw-last-failures".*?</table>', html, re.S).group(0)
    assert "7 Jan 2030, 12:29:05" in failures
    assert "2030-01-07T" not in html


def test_chart_axes_have_round_steps_up_to_the_tallest_bar():
    assert axis_ticks(3, whole=True) == ([0, 1, 2, 3], 0)
    assert axis_ticks(0, whole=True) == ([0, 1], 0)
    assert axis_ticks(1.784) == ([0.0, 0.5, 1.0, 1.5, 2.0], 1)
    assert axis_ticks(0.089) == ([0.0, 0.02, 0.04, 0.06, 0.08, 0.1], 2)
    assert axis_ticks(250) == ([0, 50, 100, 150, 200, 250], 0)


def test_gateway_stats_prints_run_times_and_top_keys(runs_and_spend):
    printed = stats_text()
    assert "CLI run time, last 24 hours: 7 runs, p50 2.0 s, p95 8.2 s" in printed
    assert "2030-01-07 12:00 UTC      5 runs  p50     3.0 s  p95     8.8 s" in printed
    assert "Top keys by cost since 2030-01-01T00:00:00Z (all: $2.05):" in printed
    support = next(line for line in printed.splitlines() if line.strip().startswith("support"))
    assert support.split()[-3:] == ["$1.20", "(1", "jobs)"]
