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
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate, TruncHour
from django.utils import timezone
from redis import Redis
from rq import Worker

from core.redis import redis_client
from queries.models import Job, QueryRequest
from queries.services.cache import cache_figures
from queries.services.workers import workers_alive

HOURS = 24
DAYS = 14
LAST_FAILURES = 10
OUTCOMES = (Job.State.COMPLETED, Job.State.FAILED, Job.State.CANCELLED)


def dashboard_figures(*, now: datetime | None = None, include_cache: bool = True) -> dict[str, Any]:
    """Everything the dashboard shows, as plain JSON-ready data.

    ``jobsPerHour`` covers the last 24 hours (the current hour last) and counts jobs by the hour they
    finished in; ``costPerDay`` the last 14 UTC days. ``requests`` counts the last 24 hours'
    submissions by outcome: ``cacheHitRatio`` is the share answered from the cache, and ``runsSaved``
    the submissions that needed no CLI run of their own (cached or joined onto an identical job).
    """
    now = now or timezone.now()
    redis = redis_client()
    figures: dict[str, Any] = {
        "generatedAt": _iso(now),
        "queues": queue_figures(),
        "workers": worker_figures(redis=redis),
        "jobs": job_state_counts(),
        "jobsPerHour": jobs_per_hour(now=now),
        "requests": request_figures(since=now - timedelta(hours=HOURS)),
        "costPerDay": cost_per_day(now=now),
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


def jobs_per_hour(*, now: datetime) -> list[dict[str, Any]]:
    """Finished jobs per hour over the last 24 hours, by outcome, from one aggregate query."""
    first = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
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
