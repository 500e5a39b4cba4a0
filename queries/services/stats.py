"""The operators' figures: one function computes them for the admin dashboard and ``gateway_stats``.

Every number is read from where it lives (job and request rows in the database, queues, workers and
cache entries in Redis) at the moment it is asked for, so the dashboard never disagrees with them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import django_rq
from django.conf import settings
from django.db import connection
from django.db.models import Aggregate, Count, F, FloatField, Func, QuerySet, Sum
from django.db.models.functions import TruncDate, TruncHour
from django.utils import timezone
from redis import Redis
from rq import Worker

from core.redis import redis_client
from queries.models import Job, QueryRequest
from queries.quotas import month_start
from queries.services.cache import cache_figures
from queries.services.workers import workers_alive

HOURS = 24
DAYS = 14
LAST_FAILURES = 10
TOP_KEYS = 10
OUTCOMES = (Job.State.COMPLETED, Job.State.FAILED, Job.State.CANCELLED)


def dashboard_figures(*, now: datetime | None = None, include_cache: bool = True) -> dict[str, Any]:
    """Everything the dashboard shows, as plain JSON-ready data.

    ``jobsPerHour`` covers the last 24 hours (the current hour last) and counts jobs by the hour they
    finished in; ``runTimePerHour`` the same hours' CLI run times (p50 and p95 of started to
    finished, see ``run_times``) and ``runTime`` the whole 24 hours'; ``costPerDay`` the last 14 UTC
    days; ``topKeys`` the keys that spent most this calendar month (UTC). ``requests`` counts the
    last 24 hours' submissions by outcome: ``cacheHitRatio`` is the share answered from the cache,
    and ``runsSaved`` the submissions that needed no CLI run of their own (cached or joined onto an
    identical job).
    """
    now = now or timezone.now()
    redis = redis_client()
    figures: dict[str, Any] = {
        "generatedAt": _iso(now),
        "queues": queue_figures(),
        "workers": worker_figures(redis=redis),
        "jobs": job_state_counts(),
        "jobsPerHour": jobs_per_hour(now=now),
        **run_time_figures(now=now),
        "requests": request_figures(since=now - timedelta(hours=HOURS)),
        "costPerDay": cost_per_day(now=now),
        "topKeys": top_keys_by_cost(now=now),
        "lastFailures": last_failures(),
    }
    if include_cache:
        figures["cache"] = cache_figures(redis=redis)
    return figures


def queue_figures() -> dict[str, dict[str, int]]:
    """Per rq queue (one per priority): jobs waiting, being worked on, and failed inside rq."""
    figures = {}
    for name in settings.RQ_QUEUE_NAMES:
        queue = django_rq.get_queue(name)
        figures[name] = {
            "queued": queue.count,
            "started": queue.started_job_registry.count,
            "failed": queue.failed_job_registry.count,
        }
    return figures


def worker_figures(*, redis: Redis) -> dict[str, Any]:
    """Live workers (a recent heartbeat: queries.services.workers), and registrations left by dead ones."""
    workers = workers_alive(redis=redis)
    return {
        "alive": len(workers),
        "busy": sum(1 for w in workers if w.state == "busy"),
        "names": sorted(w.name for w in workers),
        "stale": Worker.count(connection=redis) - len(workers),
    }


def job_state_counts() -> dict[str, int]:
    """Jobs queued and running now (the database's view, beside rq's)."""
    rows = (
        Job.objects.filter(state__in=[Job.State.QUEUED, Job.State.RUNNING])
        .values("state")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts = {str(Job.State.QUEUED): 0, str(Job.State.RUNNING): 0}
    counts.update({row["state"]: row["n"] for row in rows})
    return counts


def first_hour(now: datetime) -> datetime:
    """The start of the oldest of the 24 hourly buckets (the current hour is the last)."""
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)


def jobs_per_hour(*, now: datetime) -> list[dict[str, Any]]:
    """Finished jobs per hour over the last 24 hours, by outcome, from one aggregate query."""
    first = first_hour(now)
    rows = (
        Job.objects.filter(finished_at__gte=first, finished_at__lte=now, state__in=OUTCOMES)
        .annotate(hour=TruncHour("finished_at", tzinfo=UTC))
        .values("hour", "state")
        .annotate(n=Count("id"))
        .order_by()
    )
    buckets = {first + timedelta(hours=i): dict.fromkeys(map(str, OUTCOMES), 0) for i in range(HOURS)}
    for row in rows:
        buckets[row["hour"]][row["state"]] = row["n"]
    return [{"hour": _iso(hour), **counts} for hour, counts in buckets.items()]


class _RunSeconds(Func):
    """finished_at - started_at in seconds (PostgreSQL)."""

    template = "EXTRACT(EPOCH FROM (%(expressions)s))"
    arg_joiner = " - "
    output_field = FloatField()


class _Percentile(Aggregate):
    """PostgreSQL's percentile_cont: linear interpolation between the two nearest ranks."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: Any, fraction: float) -> None:
        super().__init__(expression, fraction=float(fraction))


def percentile(values: list[float], fraction: float) -> float | None:
    """percentile_cont in Python, for databases without it: ``values`` sorted ascending."""
    if not values:
        return None
    rank = fraction * (len(values) - 1)
    low = int(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def run_times(*, now: datetime) -> QuerySet[Job]:
    """The CLI runs that ended in the last 24 hours: jobs a worker started, whatever their outcome,
    less those answered by an identical job's cached result before the CLI started.

    Their run time is ``finished_at - started_at``, the wall-clock time the
    ``claude_execution_duration_seconds`` histogram measures, timeouts and failures included
    (``duration_ms`` is the CLI's own figure, missing when it timed out or crashed).
    """
    return Job.objects.filter(
        finished_at__gte=first_hour(now),
        finished_at__lte=now,
        started_at__isnull=False,
        served_from_cache=False,
    )


def run_time_figures(*, now: datetime) -> dict[str, Any]:
    """p50 and p95 CLI run time per hour over the last 24 hours, and over the whole 24 hours.

    PostgreSQL computes them (percentile_cont); elsewhere (SQLite) the durations are read and the same
    interpolation is done here.
    """
    runs = run_times(now=now)
    first = first_hour(now)
    hours: dict[datetime, list[float]] = {first + timedelta(hours=i): [] for i in range(HOURS)}
    if connection.vendor == "postgresql":
        seconds = _RunSeconds(F("finished_at"), F("started_at"))
        figures = {"runs": Count("id"), "p50": _Percentile(seconds, 0.5), "p95": _Percentile(seconds, 0.95)}
        rows = runs.annotate(hour=TruncHour("finished_at", tzinfo=UTC)).values("hour").annotate(**figures)
        by_hour = {row["hour"]: row for row in rows.order_by()}
        whole = runs.aggregate(**figures)
    else:
        every: list[float] = []
        for finished, started in runs.values_list("finished_at", "started_at").order_by():
            if finished is None or started is None:  # excluded by the filter; for the type checker
                continue
            value = (finished - started).total_seconds()
            hours[finished.astimezone(UTC).replace(minute=0, second=0, microsecond=0)].append(value)
            every.append(value)
        by_hour = {hour: _summary(values) for hour, values in hours.items() if values}
        whole = _summary(every)
    return {
        "runTimePerHour": [{"hour": _iso(hour), **_seconds(by_hour.get(hour))} for hour in hours],
        "runTime": _seconds(whole),
    }


def _summary(values: list[float]) -> dict[str, Any]:
    values.sort()
    return {"runs": len(values), "p50": percentile(values, 0.5), "p95": percentile(values, 0.95)}


def _seconds(row: dict[str, Any] | None) -> dict[str, Any]:
    row = row or {}
    p50, p95 = row.get("p50"), row.get("p95")
    return {
        "runs": row.get("runs") or 0,
        "p50Seconds": round(p50, 3) if p50 is not None else None,
        "p95Seconds": round(p95, 3) if p95 is not None else None,
    }


def top_keys_by_cost(*, now: datetime, limit: int = TOP_KEYS) -> dict[str, Any]:
    """The keys whose submissions cost most this calendar month (UTC), as their budgets count it.

    A key's cost is that of the jobs its submissions created (``queries.quotas.api_key_month_spend``):
    answers from the cache and joins cost nothing. Submissions without a key (``manage.py
    gateway_query``) are one row with ``apiKeyId`` null; retries are the operator's and no key's.
    """
    since = month_start(now)
    spent = QueryRequest.objects.filter(
        outcome=QueryRequest.Outcome.QUEUED, created_at__gte=since, job__cost_usd__isnull=False
    )
    rows = (
        spent.values("api_key", "api_key__name", "api_key__prefix")
        .annotate(total=Sum("job__cost_usd"), jobs=Count("id"))
        .order_by("-total", "api_key")[:limit]
    )
    total = spent.aggregate(total=Sum("job__cost_usd"))["total"] or Decimal(0)
    return {
        "since": _iso(since),
        "totalUsd": str(total),
        "keys": [
            {
                "apiKeyId": row["api_key"],
                "name": row["api_key__name"] if row["api_key"] is not None else "(no key)",
                "prefix": row["api_key__prefix"] or "",
                "costUsd": str(row["total"]),
                "jobs": row["jobs"],
            }
            for row in rows
        ],
    }


def request_figures(*, since: datetime) -> dict[str, Any]:
    rows = (
        QueryRequest.objects.filter(created_at__gte=since)
        .values("outcome")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts = dict.fromkeys(map(str, QueryRequest.Outcome), 0)
    counts.update({row["outcome"]: row["n"] for row in rows})
    total = sum(counts.values())
    cached = counts[QueryRequest.Outcome.CACHED]
    joined = counts[QueryRequest.Outcome.DEDUPLICATED]
    return {
        "total": total,
        **counts,
        "cacheHitRatio": round(cached / total, 4) if total else None,
        "runsSaved": cached + joined,
    }


def cost_per_day(*, now: datetime) -> list[dict[str, Any]]:
    """USD the CLI reported per UTC day (by the day a job finished), the last 14 days."""
    first = now.astimezone(UTC).date() - timedelta(days=DAYS - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    rows = (
        Job.objects.filter(finished_at__gte=start, finished_at__lte=now, cost_usd__isnull=False)
        .annotate(day=TruncDate("finished_at", tzinfo=UTC))
        .values("day")
        .annotate(total=Sum("cost_usd"), n=Count("id"))
        .order_by()
    )
    days = {first + timedelta(days=i): (Decimal(0), 0) for i in range(DAYS)}
    for row in rows:
        days[row["day"]] = (row["total"] or Decimal(0), row["n"])
    return [{"day": day.isoformat(), "costUsd": str(total), "jobs": n} for day, (total, n) in days.items()]


def last_failures(*, limit: int = LAST_FAILURES) -> list[dict[str, Any]]:
    jobs = Job.objects.filter(state=Job.State.FAILED).order_by("-finished_at")[:limit]
    return [
        {
            "jobId": str(job.id),
            "errorType": job.error_type,
            "errorMessage": job.error_message[:300],
            "finishedAt": _iso(job.finished_at) if job.finished_at else None,
            "query": job.query[:120],
        }
        for job in jobs.only("id", "error_type", "error_message", "finished_at", "query")
    ]


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
