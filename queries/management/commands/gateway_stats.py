"""``manage.py gateway_stats``: the admin dashboard's figures, as text or JSON."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError, CommandParser
from redis.exceptions import RedisError

from queries.services import dashboard_figures


class Command(BaseCommand):
    help = (
        "Print the figures the admin dashboard shows (queues, workers, jobs per hour by outcome, the "
        "last 24 hours' submissions and cache hit ratio, cost per day, last failures, the cache), "
        "computed by the same function. --json prints them as one JSON object."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="One JSON object, for scripts."
        )

    def handle(self, *args: object, as_json: bool, **options: object) -> None:
        try:
            figures = dashboard_figures()
        except RedisError as exc:
            raise CommandError(f"Redis is unavailable: {exc}") from exc
        if as_json:
            self.stdout.write(json.dumps(figures, indent=2))
            return
        self.stdout.write(render_text(figures))


def render_text(f: dict) -> str:
    lines = [f"Claude gateway, {f['generatedAt']}", "", "Queues (waiting / running / failed in rq):"]
    for name, q in f["queues"].items():
        lines.append(f"  {name:<8} {q['queued']:>6} {q['started']:>6} {q['failed']:>6}")
    lines.append(f"Jobs in the database: {f['jobs']['queued']} queued, {f['jobs']['running']} running")
    w = f["workers"]
    stale = f", {w['stale']} registered but not heard from" if w.get("stale") else ""
    lines.append(f"Workers: {w['alive']} alive, {w['busy']} busy{stale}")
    r = f["requests"]
    ratio = f"{r['cacheHitRatio'] * 100:.1f}%" if r["cacheHitRatio"] is not None else "n/a"
    lines += [
        "",
        "Last 24 hours:",
        f"  submissions {r['total']}: {r['queued']} new jobs, {r['cached']} from cache, "
        f"{r['deduplicated']} joined an identical job",
        f"  cache hit ratio {ratio}; Claude runs saved {r['runsSaved']}",
    ]
    totals = {name: sum(h[name] for h in f["jobsPerHour"]) for name in ("completed", "failed", "cancelled")}
    lines.append(
        f"  jobs finished: {totals['completed']} completed, {totals['failed']} failed, "
        f"{totals['cancelled']} cancelled"
    )
    lines += ["", "Jobs finished per hour (completed / failed / cancelled):"]
    for h in f["jobsPerHour"]:
        if h["completed"] or h["failed"] or h["cancelled"]:
            lines.append(f"  {h['hour']}  {h['completed']:>5} {h['failed']:>5} {h['cancelled']:>5}")
    lines += ["", "Cost per day (USD):"]
    for d in f["costPerDay"]:
        lines.append(f"  {d['day']}  {d['costUsd']:>12}  ({d['jobs']} jobs)")
    if "cache" in f:
        c = f["cache"]
        lines += ["", f"Cache: {c['entries']} answers, about {c['memoryBytes']} bytes"]
    lines += ["", "Last failures:"]
    if not f["lastFailures"]:
        lines.append("  none")
    for failure in f["lastFailures"]:
        message = failure["errorMessage"][:80]
        lines.append(f"  {failure['finishedAt']}  {failure['jobId']}  {failure['errorType']}: {message}")
    return "\n".join(lines)
