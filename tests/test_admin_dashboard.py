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

from core.redis import redis_client
from queries.models import Job, QueryRequest
from queries.services import dashboard_figures
from tests.support.factories import JobFactory, RequestFactory, backdate, failed_job

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


def test_gateway_stats_prints_the_same_figures(seeded_history):
    out = io.StringIO()
    call_command("gateway_stats", "--json", stdout=out)
    printed, expected = json.loads(out.getvalue()), dashboard_figures()
    # The whole Redis server's memory moves with everything else that uses it; the rest must match.
    printed["cache"].pop("redisUsedMemoryBytes")
    expected["cache"].pop("redisUsedMemoryBytes")
    assert printed == expected

    text = io.StringIO()
    call_command("gateway_stats", stdout=text)
    printed = text.getvalue()
    assert "high          2      0      0" in printed
    assert "Workers: 2 alive, 1 busy" in printed
    assert "submissions 6: 3 new jobs, 2 from cache, 1 joined an identical job" in printed
    assert "cache hit ratio 33.3%; Claude runs saved 3" in printed
    assert "jobs finished: 3 completed, 2 failed, 1 cancelled" in printed
    assert "2030-01-07      0.530000  (3 jobs)" in printed
    assert "Cache: 3 answers" in printed
    assert str(seeded_history["failed"][0].id) in printed


def test_an_empty_gateway_has_zero_figures(frozen):
    f = dashboard_figures()
    assert f["requests"]["cacheHitRatio"] is None and f["requests"]["total"] == 0
    assert f["workers"]["alive"] == 0 and f["lastFailures"] == [] and f["cache"]["entries"] == 0
    assert all(not (row["completed"] or row["failed"] or row["cancelled"]) for row in f["jobsPerHour"])
    assert QueryRequest.objects.count() == 0
