"""``manage.py gateway_stats``: the admin dashboard's figures, as text or JSON."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError, CommandParser
from redis.exceptions import RedisError

from core import humanize
from queries.services import dashboard_figures


class Command(BaseCommand):
    help = (
        "Print the figures the admin dashboard shows (queues, workers, jobs per hour by outcome, CLI "
        "run time p50/p95 per hour, the last 24 hours' submissions and cache hit ratio, cost per day, "
        "the top keys by this month's cost, last failures, the cache), "
        "computed by the same function; money, sizes and times written for people (UTC). --json prints "
        "them as one JSON object with the exact values."
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
    lines = [f"Claude gateway, {humanize.when(f['generatedAt'])}", ""]
    lines.append("Queues (waiting / running / failed in rq):")
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
            hour = humanize.when(h["hour"], seconds=False)
            lines.append(f"  {hour}  {h['completed']:>5} {h['failed']:>5} {h['cancelled']:>5}")
    lines += run_time_lines(f)
    lines += ["", "Cost per day:"]
    for d in f["costPerDay"]:
        jobs = f"{d['jobs']} job" + ("" if d["jobs"] == 1 else "s")
        lines.append(f"  {d['day']}  {humanize.usd(d['costUsd']):>10}  ({jobs})")
    lines += top_key_lines(f)
    if "cache" in f:
        c = f["cache"]
        lines += ["", f"Cache: {c['entries']} answers, about {humanize.size(c['memoryBytes'])}"]
    lines += ["", "Last failures:"]
    if not f["lastFailures"]:
        lines.append("  none")
    for failure in f["lastFailures"]:
        message = failure["errorMessage"][:80]
        finished = humanize.when(failure["finishedAt"])
        lines.append(f"  {finished}  {failure['jobId']}  {failure['errorType']}: {message}")
    return "\n".join(lines)


def run_time_lines(f: dict) -> list[str]:
    seconds = humanize.duration

    whole = f["runTime"]
    lines = [
        "",
        f"CLI run time, last 24 hours: {whole['runs']} runs, p50 {seconds(whole['p50Seconds'])}, "
        f"p95 {seconds(whole['p95Seconds'])}",
    ]
    for h in f["runTimePerHour"]:
        if h["runs"]:
            lines.append(
                f"  {humanize.when(h['hour'], seconds=False)}  {h['runs']:>5} runs  "
                f"p50 {seconds(h['p50Seconds']):>9}  "
                f"p95 {seconds(h['p95Seconds']):>9}"
            )
    return lines


def top_key_lines(f: dict) -> list[str]:
    top = f["topKeys"]
    lines = ["", f"Top keys by cost since {top['since']} (all: {humanize.usd(top['totalUsd'])}):"]
    if not top["keys"]:
        lines.append("  none")
    for key in top["keys"]:
        lines.append(
            f"  {key['name'][:40]:<40} {key['prefix']:<14} {humanize.usd(key['costUsd']):>12}  "
            f"({key['jobs']} jobs)"
        )
    return lines
