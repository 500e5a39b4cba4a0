"""The gateway's own metrics: counted in Redis where an outcome becomes known, read at scrape time.

Why Redis and not per-process counters: a job's outcome becomes known in an rq work horse, a process
forked for that one job and gone a moment later, on whichever host ran it. A counter kept in process
memory (or in a per-process prometheus_client file) would have to be collected from every such
process; a counter kept in Redis is one ``HINCRBY`` where the outcome is known, and every web
process, on every host, reads the same totals with one ``HGETALL`` at scrape time. Nothing grows with
the number of jobs, processes or restarts. What it costs: one Redis round trip per recorded outcome
(well under a millisecond, beside a CLI run of seconds), and counts made while Redis is unreachable
are lost (the gateway cannot queue work then anyway). A Redis restart without persistence resets the
totals, which Prometheus handles as a counter reset.

django-prometheus's metrics (HTTP requests, database, cache) stay per process; under gunicorn they
use prometheus_client's multiprocess mode (``core.multiprocess``). ``metrics_view`` serves both.

Every ``*_counted``/``*_observed`` function is safe to call anywhere: with ``METRICS_ENABLED`` off it
does nothing, and a Redis failure is logged, never raised into the pipeline.
"""

from __future__ import annotations

import bisect
import hmac
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError
from rq import Queue
from rq.registry import DeferredJobRegistry, FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.worker_registration import REDIS_WORKER_KEYS

from core import multiprocess
from core.errors import error_response
from core.redis import redis_client

logger = logging.getLogger(__name__)

# Redis keys (no django-redis prefix, so operators can look them up by name).
COUNTERS_KEY = "metrics:counters"
CLI_RUNNING_KEY = "metrics:cli_running"

# A warm CLI answers in 0.07-0.1 s, a cold one in about half a second, and a run may last until
# CLAUDE_TIMEOUT (minutes): fine steps below a second, so p50/p95 of warm runs mean something.
DURATION_BUCKETS: tuple[float, ...] = (
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
    90.0,
    120.0,
    180.0,
    300.0,
    450.0,
    600.0,
)
TOKEN_TYPES = ("input", "output", "cache_read", "cache_creation")
QUEUE_STATES = ("queued", "started", "failed", "deferred", "scheduled")

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

HELP = {
    "claude_jobs_completed_total": "Jobs that finished with an answer (a CLI run or a cached answer).",
    "claude_jobs_failed_total": "Jobs that finished without an answer, by failure type.",
    "claude_cache_hits_total": "Submissions answered from the cache.",
    "claude_cache_misses_total": "Submissions that looked in the cache and found nothing.",
    "claude_dedup_hits_total": "Submissions that joined an identical job already in flight.",
    "claude_cli_pool_hits_total": "CLI runs that took a CLI started ahead of time from the warm pool.",
    "claude_cli_pool_misses_total": "CLI runs that found no warm CLI for their options and started one cold.",
    "claude_execution_duration_seconds": "Wall-clock time of each CLI run, whatever its outcome.",
    "claude_cost_usd_total": "US dollars the CLI reported spending.",
    "claude_tokens_total": "Tokens the CLI reported, by type.",
    "claude_webhook_deliveries_total": "Webhook delivery attempts, by outcome.",
    "claude_queue_size": "rq jobs per queue and state, read from Redis at scrape time.",
    "claude_cli_processes_running": "CLI processes running a job now, across every worker host.",
    "claude_workers": "Live rq workers (by their heartbeat), by state.",
    "claude_metrics_store_up": "1 if the Redis-held gateway metrics could be read for this scrape.",
}


# --- counting ----------------------------------------------------------------------------------------


def field_name(name: str, **labels: str) -> str:
    """The Redis hash field of one series: the name, then its labels sorted, Prometheus-style."""
    if not labels:
        return name
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def _label(value: Any, *, fallback: str = "unknown") -> str:
    """A label value safe to store: free text could explode the number of series."""
    text = str(value or "")
    return text if _LABEL_VALUE.match(text) else fallback


def _add(increments: Iterable[tuple[str, int | float]], *, cli_stopped: Any = None) -> None:
    """Apply increments in one MULTI/EXEC, so a scrape sees all of them or none; with
    ``cli_stopped`` (a job id), the same round trip ends that job's CLI mark (see cli_stopped)."""
    if not settings.METRICS_ENABLED:
        return
    items = [(field, amount) for field, amount in increments if amount]
    if not items and cli_stopped is None:
        return
    try:
        pipe = redis_client().pipeline(transaction=True)
        for field, amount in items:
            if isinstance(amount, int):
                pipe.hincrby(COUNTERS_KEY, field, amount)
            else:
                pipe.hincrbyfloat(COUNTERS_KEY, field, amount)
        if cli_stopped is not None:
            pipe.zrem(CLI_RUNNING_KEY, str(cli_stopped))
        pipe.execute()
    except RedisError:
        logger.warning("could not record metrics %s", [field for field, _ in items], exc_info=True)


def request_counted(*, request: Any) -> None:
    """Count a recorded submission answered from the cache or joined onto an in-flight job."""
    outcome = str(request.outcome)
    if outcome == "cached":
        _add([(field_name("claude_cache_hits_total"), 1)])
    elif outcome == "deduplicated":
        _add([(field_name("claude_dedup_hits_total"), 1)])


def cache_miss_counted() -> None:
    """Count a submission that looked in the cache and went on to a job (joined or new).

    Called once per submission, where the pipeline settles on not answering from the cache: a
    submission that lost a race looks more than once, but is one hit or one miss.
    """
    _add([(field_name("claude_cache_misses_total"), 1)])


def cli_pool_counted(*, hit: bool) -> None:
    """Count a CLI run that took a warm CLI from the pool (hit) or started its CLI cold (miss)."""
    _add([(field_name("claude_cli_pool_hits_total" if hit else "claude_cli_pool_misses_total"), 1)])


def job_finished_counted(*, job: Any) -> None:
    """Count a job that reached its final state (called once per job, where that state is saved)."""
    state = str(job.state)
    increments = []
    if state == "completed":
        increments.append((field_name("claude_jobs_completed_total"), 1))
    elif state in ("failed", "cancelled"):
        reason = _label(job.error_type or ("cancelled" if state == "cancelled" else ""))
        increments.append((field_name("claude_jobs_failed_total", reason=reason), 1))
    # Whatever ended the job (an answer, a timeout, a dead work horse), its CLI is not running now:
    # its mark goes in the same round trip.
    _add(increments, cli_stopped=job.id)


def cli_run_observed(*, job: Any, outcome: Any) -> None:
    """Record one finished CLI run (a runner outcome): its duration, and the cost and tokens it
    reported (already parsed onto the job). A binary that never started is no run."""
    if outcome.pid is None:
        return
    duration = float(outcome.duration)
    increments: list[tuple[str, int | float]] = []
    if duration >= 0 and math.isfinite(duration):
        index = bisect.bisect_left(DURATION_BUCKETS, duration)
        le = _float_text(DURATION_BUCKETS[index]) if index < len(DURATION_BUCKETS) else "+Inf"
        increments += [
            (field_name("claude_execution_duration_seconds_bucket", le=le), 1),
            (field_name("claude_execution_duration_seconds_sum"), float(duration)),
        ]
    if job.cost_usd is not None and float(job.cost_usd) > 0:
        increments.append((field_name("claude_cost_usd_total"), float(job.cost_usd)))
    tokens = {
        "input": job.input_tokens,
        "output": job.output_tokens,
        "cache_read": job.cache_read_input_tokens,
        "cache_creation": job.cache_creation_input_tokens,
    }
    for kind, count in tokens.items():
        if isinstance(count, int) and count > 0:
            increments.append((field_name("claude_tokens_total", type=kind), count))
    _add(increments)


def webhook_delivery_counted(outcome: str) -> None:
    """Count one webhook delivery attempt by its outcome (``delivered``, ``failed``, ...)."""
    _add([(field_name("claude_webhook_deliveries_total", outcome=_label(outcome)), 1)])


def cli_started(*, job_id: Any, expected_end: float) -> None:
    """Mark a CLI process as running until ``cli_stopped``, or at the latest ``expected_end`` (epoch s).

    The deadline bounds what a work horse killed with SIGKILL leaves behind: its mark stops counting
    once the run could no longer be going.
    """
    if not settings.METRICS_ENABLED:
        return
    try:
        pipe = redis_client().pipeline(transaction=False)
        pipe.zadd(CLI_RUNNING_KEY, {str(job_id): expected_end})
        pipe.zremrangebyscore(CLI_RUNNING_KEY, "-inf", time.time())
        pipe.execute()
    except RedisError:
        logger.warning("could not record the start of the CLI for job %s", job_id, exc_info=True)


def cli_stopped(*, job_id: Any) -> None:
    if not settings.METRICS_ENABLED:
        return
    try:
        redis_client().zrem(CLI_RUNNING_KEY, str(job_id))
    except RedisError:
        logger.warning("could not record the end of the CLI for job %s", job_id, exc_info=True)


def _float_text(value: float) -> str:
    """How Prometheus writes a bucket bound: 1.0, 7.5, 600.0."""
    return repr(float(value))


# --- reading -----------------------------------------------------------------------------------------


def _parse_field(field: str) -> tuple[str, dict[str, str]]:
    name, _, rest = field.partition("{")
    labels: dict[str, str] = {}
    if rest:
        for part in rest.rstrip("}").split(","):
            key, _, value = part.partition("=")
            labels[key] = value.strip('"')
    return name, labels


def _queue_keys(name: str) -> list[tuple[str, str]]:
    """rq's Redis keys for a queue's states, in QUEUE_STATES order (no connection needed)."""
    return [
        ("list", f"{Queue.redis_queue_namespace_prefix}{name}"),
        ("zset", StartedJobRegistry.key_template.format(name)),
        ("zset", FailedJobRegistry.key_template.format(name)),
        ("zset", DeferredJobRegistry.key_template.format(name)),
        ("zset", ScheduledJobRegistry.key_template.format(name)),
    ]


def _worker_states(keys: list[bytes]) -> dict[str, int]:
    if not keys:
        return {}
    pipe = redis_client().pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "state")
    counts: dict[str, int] = {}
    for state in pipe.execute():
        if state is not None:
            name = _label(state.decode(), fallback="other")
            counts[name] = counts.get(name, 0) + 1
    return counts


# What the apps above add to a scrape (registered from their AppConfig.ready): label values shown
# even at zero, and Redis reads that join the scrape's one pipelined round trip.
_known_labels: dict[str, tuple[str, ...]] = {"claude_tokens_total": TOKEN_TYPES}


def known_labels_register(name: str, values: Iterable[str]) -> None:
    """Show these label values of counter ``name`` on every scrape, at zero until counted."""
    _known_labels[name] = tuple(sorted({*_known_labels.get(name, ()), *map(str, values)}))


@dataclass(frozen=True)
class ScrapeSource:
    """Gauges read from Redis at scrape time by an app above core.

    ``read`` queues its commands on the scrape's pipeline and returns how many; ``gauges`` turns
    their replies (and Redis's clock, seconds since the epoch) into metric families.
    """

    read: Callable[[Any], int]
    gauges: Callable[[list[Any], float], Iterable[Metric]]


_sources: list[ScrapeSource] = []


def scrape_source_register(source: ScrapeSource) -> None:
    if source not in _sources:
        _sources.append(source)


class GatewayCollector:
    """Reads the gateway's counters, the running CLIs and the rq queues from Redis at scrape time."""

    def collect(self) -> Iterator[Metric]:
        names = list(settings.RQ_QUEUE_NAMES)
        sources = list(_sources)
        try:
            pipe = redis_client().pipeline(transaction=False)
            pipe.hgetall(COUNTERS_KEY)
            pipe.zcount(CLI_RUNNING_KEY, time.time(), "+inf")
            pipe.smembers(REDIS_WORKER_KEYS)
            pipe.time()
            for name in names:
                for kind, key in _queue_keys(name):
                    if kind == "list":
                        pipe.llen(key)
                    else:
                        pipe.zcard(key)
            counts = [source.read(pipe) for source in sources]
            raw, running, worker_keys, now, *rest = pipe.execute()
            queue_counts = rest[: len(names) * len(QUEUE_STATES)]
            replies = rest[len(queue_counts) :]
            # A worker's hash expires with its heartbeat; the set keeps the key until rq cleans it.
            states = _worker_states(sorted(worker_keys))
        except RedisError as exc:
            # No numbers rather than wrong ones: a missing series shows as a gap, a zero would lie.
            logger.warning("metrics store unreachable at scrape: %s", exc)
            yield GaugeMetricFamily("claude_metrics_store_up", HELP["claude_metrics_store_up"], value=0)
            return

        yield GaugeMetricFamily("claude_metrics_store_up", HELP["claude_metrics_store_up"], value=1)
        yield from self._counters(raw)
        yield GaugeMetricFamily(
            "claude_cli_processes_running", HELP["claude_cli_processes_running"], value=running
        )
        size = GaugeMetricFamily("claude_queue_size", HELP["claude_queue_size"], labels=["queue", "state"])
        for i, name in enumerate(names):
            for j, state in enumerate(QUEUE_STATES):
                size.add_metric([name, state], queue_counts[i * len(QUEUE_STATES) + j])
        yield size
        workers = GaugeMetricFamily("claude_workers", HELP["claude_workers"], labels=["state"])
        for state in sorted({"idle", "busy", *states}):
            workers.add_metric([state], states.get(state, 0))
        yield workers
        redis_now = now[0] + now[1] / 1e6
        for source, count in zip(sources, counts, strict=True):
            yield from source.gauges(replies[:count], redis_now)
            replies = replies[count:]

    def _counters(self, raw: dict[bytes, bytes]) -> Iterator[Metric]:
        series: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for key, value in raw.items():
            name, labels = _parse_field(key.decode())
            series.setdefault(name, {})[tuple(sorted(labels.items()))] = float(value)

        def counter(name: str, label: str | None = None) -> CounterMetricFamily:
            family = CounterMetricFamily(name, HELP[name], labels=[label] if label else None)
            known = _known_labels.get(name, ())
            values = series.get(name, {})
            if label is None:
                family.add_metric([], values.get((), 0.0))
                return family
            seen = {labels[0][1]: v for labels, v in values.items() if labels and labels[0][0] == label}
            for value in sorted(set(known) | set(seen)):
                family.add_metric([value], seen.get(value, 0.0))
            return family

        yield counter("claude_jobs_completed_total")
        yield counter("claude_jobs_failed_total", "reason")
        yield counter("claude_cache_hits_total")
        yield counter("claude_cache_misses_total")
        yield counter("claude_dedup_hits_total")
        yield counter("claude_cli_pool_hits_total")
        yield counter("claude_cli_pool_misses_total")
        yield counter("claude_cost_usd_total")
        yield counter("claude_tokens_total", "type")
        yield counter("claude_webhook_deliveries_total", "outcome")

        name = "claude_execution_duration_seconds"
        raw_buckets = {labels[0][1]: v for labels, v in series.get(f"{name}_bucket", {}).items() if labels}
        cumulative, buckets = 0.0, []
        for le in [*(_float_text(b) for b in DURATION_BUCKETS), "+Inf"]:
            cumulative += raw_buckets.get(le, 0.0)
            buckets.append((le, cumulative))
        total = series.get(f"{name}_sum", {}).get((), 0.0)
        yield HistogramMetricFamily(name, HELP[name], buckets=buckets, sum_value=total)


# django-rq defines this Summary when its admin URLs load; its name breaks Prometheus's naming rules
# (a summary ending in _total, which promtool rejects) and it only times django-rq's own stats page.
_EXCLUDED = frozenset({"rq_request_processing_seconds_total"})


class _Filtered:
    """django-prometheus's metrics: this process's registry, or every web process's files."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]):
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        for metric in self._collect():
            if metric.name not in _EXCLUDED:
                yield metric


def metrics_text() -> bytes:
    """The whole exposition: django-prometheus's metrics (every web process's) plus the gateway's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector())
    directory = multiprocess.directory()
    if directory is None:
        registry.register(_Filtered(REGISTRY.collect))
        return generate_latest(registry)
    registry.register(_Filtered(MultiProcessCollector(None, path=str(directory)).collect))
    # Held shared while the files are read, so a compaction never runs halfway through a scrape.
    with multiprocess.lock(directory, shared=True):
        return generate_latest(registry)


def _authorized(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``/metrics`` for Prometheus; with ``METRICS_TOKEN`` set, only for ``Authorization: Bearer <it>``."""
    if not _authorized(request):
        response = error_response(401, "A valid metrics token is required.")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(metrics_text(), content_type=CONTENT_TYPE_LATEST)
