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
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from redis import Redis
from rq import Worker

from core.redis import redis_client
from queries.models import Job, QueryRequest
from queries.services import CACHE_KEY

HOURS = 24
DAYS = 14
LAST_FAILURES = 10
# MEMORY USAGE is asked of this many entries and the average scaled up: exact for a small cache,
# and a bounded cost (one pipelined round trip) for a big one.
MEMORY_SAMPLE = 200
SCAN_BATCH = 1000
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
    workers = Worker.all(connection=redis)
    busy = [w for w in workers if w.get_state() == "busy"]
    return {
        "alive": len(workers),
        "busy": len(busy),
        "names": sorted(w.name for w in workers),
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


def cache_figures(*, redis: Redis | None = None, sample: int = MEMORY_SAMPLE) -> dict[str, Any]:
    """How many answers are cached (``claude:*``) and about how much memory they take.

    The count walks the keyspace with SCAN (never KEYS, which blocks Redis while it runs).
    """
    redis = redis or redis_client()
    count = 0
    sampled: list[bytes] = []
    for key in redis.scan_iter(match=CACHE_KEY.format("*"), count=SCAN_BATCH):
        count += 1
        if len(sampled) < sample:
            sampled.append(key)
    memory = 0
    if sampled:
        pipe = redis.pipeline(transaction=False)
        for key in sampled:
            pipe.memory_usage(key)
        sizes = [size for size in pipe.execute() if size is not None]
        if sizes:
            memory = round(sum(sizes) / len(sizes) * count)
    info = redis.info("memory")
    return {
        "entries": count,
        "memoryBytes": memory,
        "memoryExact": count <= sample,
        "redisUsedMemoryBytes": int(info.get("used_memory", 0)),
    }


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


# --- charts: drawn here as SVG, so the admin needs no script and no network --------------------------

OUTCOME_COLOURS = {"completed": "#3a7d44", "failed": "#c0392b", "cancelled": "#9a9a9a"}


def svg_stacked_bars(
    *,
    bars: list[tuple[str, dict[str, float]]],
    colours: dict[str, str],
    title: str,
    unit: str = "",
    prefix: str = "",
    width: int = 720,
    height: int = 180,
    label_every: int = 1,
) -> SafeString:
    """A stacked bar chart: ``bars`` is ``[(label, {series: value})]``; each bar has a tooltip."""
    left, bottom, top = 48, 22, 10
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max((sum(values.values()) for _, values in bars), default=0) or 1
    slot = plot_w / max(len(bars), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gw-chart" role="img" viewBox="0 0 {width} {height}"'
        f' width="100%" preserveAspectRatio="xMinYMin meet"><title>{escape(title)}</title>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 8}" y2="{top + plot_h}" class="gw-axis"/>',
        f'<text x="{left - 6}" y="{top + 8}" text-anchor="end" class="gw-tick">{escape(prefix)}'
        f"{escape(_short(peak))}{escape(unit)}</text>",
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" class="gw-tick">0</text>',
    ]
    for i, (label, values) in enumerate(bars):
        x = left + i * slot + slot * 0.1
        y = top + plot_h
        tip = ", ".join(f"{name} {prefix}{_short(value)}{unit}" for name, value in values.items())
        for name, value in values.items():
            if value <= 0:
                continue
            h = value / peak * plot_h
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" '
                f'fill="{colours.get(name, "#417690")}" data-series="{escape(name)}" '
                f'data-value="{value}"><title>{escape(label)}: {escape(tip)}</title></rect>'
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{height - 6}" text-anchor="middle" class="gw-tick">'
                f"{escape(label)}</text>"
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated text above is escaped


def _short(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.4f}".rstrip("0")


def dashboard_charts(figures: dict[str, Any]) -> dict[str, SafeString]:
    hours = [
        (row["hour"][11:13] + "h", {name: row[name] for name in OUTCOME_COLOURS})
        for row in figures["jobsPerHour"]
    ]
    days = [(row["day"][5:], {"cost": float(row["costUsd"])}) for row in figures["costPerDay"]]
    return {
        "jobs_per_hour": svg_stacked_bars(
            bars=hours, colours=OUTCOME_COLOURS, title="Jobs finished per hour, by outcome", label_every=3
        ),
        "cost_per_day": svg_stacked_bars(
            bars=days, colours={"cost": "#417690"}, title="CLI cost per day (USD)", prefix="$", label_every=2
        ),
    }
