"""The query pipeline: submit (cache, dedup, queue) and run (the CLI, the result, the cache).

Redis holds only what can be rebuilt or may expire (cache entries, in-flight marks, queue entries);
the database is the record of every submission and every execution.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import time
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import django_rq
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError, IntegrityError
from django.db.models import Exists, OuterRef
from django.db.models.signals import post_delete
from django.utils import timezone
from redis import Redis
from redis.exceptions import RedisError
from rq import Worker as RqWorker
from rq.job import Job as RqJob

from core import logs, metrics
from core.errors import GatewayError, Overloaded
from core.redis import redis_client
from queries import journal, pool, quotas, runner
from queries.auth import api_keys_changed, cache_scope
from queries.models import PRIORITY_QUEUES, ApiKey, Job, Priority, QueryRequest
from routing.services import McpUnavailable, Route, route_for_job, route_query
from webhooks import services as webhook_services

logger = logging.getLogger(__name__)

CACHE_KEY = journal.CACHE_KEY
DEDUP_KEY = "dedup:{}"

# How long a submitter that lost the dedup race waits for the winner's Job row to appear. The winner
# inserts it right after claiming the mark, so this only runs out if the winner died in between.
DEDUP_JOIN_WAIT = 2.0
SUBMIT_ATTEMPTS = 3

# Delete the in-flight mark only if it still names this job: a later submission may own it by now.
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


# --- normalization and hashing ---------------------------------------------------------------------


def normalize_query(text: str) -> str:
    """Unicode NFC, trimmed, whitespace runs collapsed to one space, lowercased."""
    return " ".join(unicodedata.normalize("NFC", text).split()).lower()


def query_hash(
    *, normalized: str, model: str | None, servers: Iterable[str], scope: str | None = None
) -> str:
    """SHA-256 over a canonical JSON of what decides the answer: query, model and MCP servers.

    ``scope`` (see queries.auth.cache_scope) keeps one key's cache entries and in-flight marks apart
    from another's; without one the hash is the same for every caller.
    """
    fields: dict[str, Any] = {"query": normalized, "model": model or None, "mcpServers": sorted(servers)}
    if scope is not None:
        fields["scope"] = scope
    canonical = json.dumps(
        fields,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- the cache and the in-flight marks -------------------------------------------------------------


def cache_get(*, query_hash: str, redis: Redis | None = None) -> dict[str, Any] | None:
    """The cached ``{"jobId", "result"}`` for a hash, or None. A Redis failure counts as a miss."""
    try:
        raw = (redis or redis_client()).get(CACHE_KEY.format(query_hash))
    except RedisError:
        logger.warning("cache lookup failed; treating as a miss", exc_info=True)
        return None
    if raw is None:
        return None
    try:
        entry = json.loads(raw)
    except ValueError:
        logger.warning("unreadable cache entry %s; ignoring it", CACHE_KEY.format(query_hash))
        return None
    if not isinstance(entry, dict) or "jobId" not in entry or "result" not in entry:
        return None
    return entry


def cache_put(*, job: Job, ttl: int | None = None, redis: Redis | None = None) -> bool:
    """Cache a completed job's result under its hash for ``ttl`` (default CACHE_TTL) seconds.

    Returns False if Redis failed."""
    entry = {"jobId": str(job.id), "result": job.build_result()}
    try:
        (redis or redis_client()).set(
            CACHE_KEY.format(job.hash), json.dumps(entry, separators=(",", ":")), ex=ttl or settings.CACHE_TTL
        )
    except RedisError:
        logger.error("could not cache the result of job %s", job.id, exc_info=True)
        return False
    return True


def _job_deleted(*, instance: Job, **kwargs: object) -> None:
    """Drop a deleted job's cached answer: requests it answered could not point to the job."""
    try:
        journal.cache_entry_purge(query_hash=instance.hash, job_id=str(instance.id))
    except RedisError:
        # The recorder drops the entry when it meets a request answered from it.
        logger.warning("could not drop the cache entry of deleted job %s", instance.id, exc_info=True)


post_delete.connect(_job_deleted, sender=Job, dispatch_uid="services-job-deleted")


def dedup_release(*, query_hash: str, job_id: uuid.UUID | str, redis: Redis | None = None) -> None:
    """Clear the in-flight mark for a hash if it still names ``job_id``."""
    try:
        (redis or redis_client()).eval(_RELEASE_SCRIPT, 1, DEDUP_KEY.format(query_hash), str(job_id))
    except RedisError:
        # The mark expires after DEDUP_TTL; until then identical queries join a finished job and
        # are sent on to the cache or a new job by query_submit.
        logger.error("could not clear the in-flight mark of job %s", job_id, exc_info=True)


# --- submit ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """What a submission led to: its request's id and outcome, its job, and a cached result if any.

    ``request`` is the QueryRequest row when it was written in the request (not for a journaled hit).
    """

    request_id: uuid.UUID
    outcome: str
    job_id: uuid.UUID
    job_state: str
    result: dict[str, Any] | None = None
    request: QueryRequest | None = None

    @classmethod
    def of(cls, request: QueryRequest, *, job_state: str, result: dict[str, Any] | None = None) -> Submission:
        return cls(
            request_id=request.id,
            outcome=request.outcome,
            job_id=request.job_id,
            job_state=job_state,
            result=result,
            request=request,
        )


def _query_route_and_hash(*, api_key: ApiKey | None, query: str, model: str | None) -> tuple[str, Route, str]:
    normalized = normalize_query(query)
    route = route_query(query=query)
    digest = query_hash(
        normalized=normalized,
        model=model,
        servers=route.server_names,
        scope=cache_scope(api_key=api_key),
    )
    return normalized, route, digest


def _request_fields(
    *,
    api_key: ApiKey | None,
    query: str,
    digest: str,
    priority: str,
    model: str | None,
    webhook_url: str = "",
    metadata: dict[str, Any] | None = None,
    no_cache: bool = False,
) -> dict[str, Any]:
    return {
        "api_key": api_key,
        "query": query,
        "hash": digest,
        "priority": priority,
        "model": model or "",
        "webhook_url": webhook_url,
        "metadata": metadata,
        "no_cache": no_cache,
        # The HTTP request's log requestId, so the id a client gets back is the one in the logs.
        "id": logs.request_id_claim(),
    }


def query_cache_answer(
    *,
    api_key: ApiKey | None,
    query: str,
    priority: str = Priority.NORMAL,
    model: str | None = None,
    keys_version: bytes | None = None,
) -> Submission | None:
    """The cache's answer, journaled and counted, or None with nothing recorded (then use query_submit).

    What query_submit does first for a query with no webhook, metadata or noCache, on its own: the
    API answers a cache hit with it before any of the full request handling (queries/hits.py).
    Raises KeyNotPermitted as query_submit does, and journal.KeysChanged when ``keys_version`` (the API
    keys version ``api_key`` was read at, queries.auth) is no longer current.
    """
    if not (settings.CACHE_ENABLED and settings.CACHE_HIT_JOURNAL):
        return None
    quotas.api_key_authorize(api_key=api_key, priority=priority, model=model)
    _, route, digest = _query_route_and_hash(api_key=api_key, query=query, model=model)
    if not route.cacheable:
        return None
    fields = _request_fields(api_key=api_key, query=query, digest=digest, priority=priority, model=model)
    return _submit_from_cache_journaled(
        query_hash=digest, redis=redis_client(), request_fields=fields, keys_version=keys_version
    )


def query_submit(
    *,
    api_key: ApiKey | None,
    query: str,
    priority: str = Priority.NORMAL,
    model: str | None = None,
    webhook_url: str = "",
    metadata: dict[str, Any] | None = None,
    no_cache: bool = False,
) -> Submission:
    """Answer from the cache, join an identical in-flight job, or queue a new one.

    Every call records a QueryRequest. N identical concurrent calls make exactly one Job: the
    in-flight mark is claimed with SET NX before the Job row exists.
    """
    quotas.api_key_authorize(api_key=api_key, priority=priority, model=model)
    normalized, route, digest = _query_route_and_hash(api_key=api_key, query=query, model=model)
    redis = redis_client()
    request_fields = _request_fields(
        api_key=api_key,
        query=query,
        digest=digest,
        priority=priority,
        model=model,
        webhook_url=webhook_url,
        metadata=metadata,
        no_cache=no_cache,
    )
    # An intent whose rule says "never cache" (cache_ttl 0) has answers that go stale: no lookup either.
    lookup = settings.CACHE_ENABLED and not no_cache and route.cacheable

    for _ in range(SUBMIT_ATTEMPTS):
        if lookup:
            submission = _submit_from_cache(query_hash=digest, redis=redis, request_fields=request_fields)
            if submission is not None:
                return submission

        job_id = uuid.uuid4()
        if settings.DEDUP_ENABLED:
            try:
                claimed = redis.set(DEDUP_KEY.format(digest), str(job_id), nx=True, ex=settings.DEDUP_TTL)
            except RedisError as exc:
                raise Overloaded("The queue is unavailable; try again shortly.") from exc
            if not claimed:
                submission = _submit_join(query_hash=digest, redis=redis, request_fields=request_fields)
                if submission is not None:
                    if lookup:
                        metrics.cache_miss_counted()
                    return submission
                continue
            if lookup:
                # The job that held the mark may have cached its answer and released the mark since our
                # lookup above; workers cache before they release, so one more look settles it.
                submission = _submit_from_cache(query_hash=digest, redis=redis, request_fields=request_fields)
                if submission is not None:
                    dedup_release(query_hash=digest, job_id=job_id, redis=redis)
                    return submission

        try:
            quotas.job_admit(api_key=api_key, job_id=job_id, redis=redis)
        except GatewayError:
            if settings.DEDUP_ENABLED:
                dedup_release(query_hash=digest, job_id=job_id, redis=redis)
            raise
        if lookup:
            metrics.cache_miss_counted()
        return _submit_new_job(
            job_id=job_id,
            query_hash=digest,
            normalized=normalized,
            route=route,
            no_cache=no_cache,
            redis=redis,
            request_fields=request_fields,
        )
    raise Overloaded("Could not settle an identical in-flight query; try again.")


def _submit_from_cache(*, query_hash: str, redis: Redis, request_fields: dict[str, Any]) -> Submission | None:
    if settings.CACHE_HIT_JOURNAL and not request_fields["webhook_url"]:
        return _submit_from_cache_journaled(query_hash=query_hash, redis=redis, request_fields=request_fields)
    entry = cache_get(query_hash=query_hash, redis=redis)
    if entry is None:
        return None
    try:
        job_id = uuid.UUID(str(entry["jobId"]))
        request = QueryRequest.objects.create(
            job_id=job_id, outcome=QueryRequest.Outcome.CACHED, **request_fields
        )
    except (IntegrityError, ValueError):
        # The job that produced the entry is gone (deleted by an operator): the entry is useless.
        logger.warning("cache entry for %s names a missing job; ignoring it", query_hash)
        return None
    request_recorded(request=request)
    return Submission.of(request, job_state=Job.State.COMPLETED, result=entry["result"])


def _submit_from_cache_journaled(
    *, query_hash: str, redis: Redis, request_fields: dict[str, Any], keys_version: bytes | None = None
) -> Submission | None:
    """A cache hit answered, journaled and counted in one Redis round trip (queries/journal.py).

    Raises journal.KeysChanged when ``keys_version`` is given and no longer current.
    """
    api_key = request_fields["api_key"]
    record = journal.JournalRecord(
        id=request_fields["id"],
        api_key_id=api_key.pk if api_key is not None else None,
        query=request_fields["query"],
        hash=request_fields["hash"],
        priority=request_fields["priority"],
        model=request_fields["model"],
        metadata=request_fields["metadata"],
        no_cache=request_fields["no_cache"],
        created_at=timezone.now(),
    )
    try:
        raw = journal.journal_cache_hit(
            cache_key=CACHE_KEY.format(query_hash), record=record, redis=redis, keys_version=keys_version
        )
    except RedisError:
        logger.warning("cache lookup failed; treating as a miss", exc_info=True)
        return None
    if raw is None:
        return None
    entry = json.loads(raw)
    return Submission(
        request_id=record.id,
        outcome=QueryRequest.Outcome.CACHED,
        job_id=uuid.UUID(entry["jobId"]),
        job_state=Job.State.COMPLETED,
        result=entry["result"],
    )


def _submit_join(*, query_hash: str, redis: Redis, request_fields: dict[str, Any]) -> Submission | None:
    """Join the job that holds the in-flight mark; None means "try again from the top"."""
    try:
        holder = redis.get(DEDUP_KEY.format(query_hash))
    except RedisError as exc:
        raise Overloaded("The queue is unavailable; try again shortly.") from exc
    if holder is None:
        return None
    holder_id = holder.decode() if isinstance(holder, bytes) else str(holder)
    job = _wait_for_job(holder_id)
    if job is None or job.is_finished:
        # A finished job's mark is about to be cleared (or its worker died): drop it, then the next
        # round finds the cached answer or makes a new job.
        dedup_release(query_hash=query_hash, job_id=holder_id, redis=redis)
        return None
    request = QueryRequest.objects.create(
        job=job, outcome=QueryRequest.Outcome.DEDUPLICATED, **request_fields
    )
    request_recorded(request=request)
    return Submission.of(request, job_state=job.state)


def _wait_for_job(job_id: str) -> Job | None:
    deadline = time.monotonic() + DEDUP_JOIN_WAIT
    delay = 0.005
    while True:
        try:
            job = Job.objects.only("id", "state").filter(id=job_id).first()
        except (ValueError, TypeError):
            return None
        if job is not None or time.monotonic() >= deadline:
            return job
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _submit_new_job(
    *,
    job_id: uuid.UUID,
    query_hash: str,
    normalized: str,
    route: Route,
    no_cache: bool,
    redis: Redis,
    request_fields: dict[str, Any],
) -> Submission:
    # Autocommit: the row is visible at once to identical submissions waiting in _wait_for_job.
    job = Job.objects.create(
        id=job_id,
        hash=query_hash,
        query=request_fields["query"],
        normalized_query=normalized,
        priority=request_fields["priority"],
        model=request_fields["model"],
        intent=route.intent,
        mcp_servers=route.server_names,
        use_cache=not no_cache and route.cacheable,
        rq_job_id=str(job_id),
    )
    request = QueryRequest.objects.create(job=job, outcome=QueryRequest.Outcome.QUEUED, **request_fields)
    try:
        job_enqueue(job=job)
    except RedisError as exc:
        job_fail(
            job=job,
            error_type=Job.ErrorType.QUEUE_UNAVAILABLE,
            message=f"The job could not be queued: {exc}",
        )
        raise Overloaded(
            "The queue is unavailable; try again shortly.", details={"jobId": str(job.id)}
        ) from exc
    return Submission.of(request, job_state=job.state)


_queues: dict[str, Any] = {}


def job_enqueue(*, job: Job) -> None:
    """Put a job on its priority's rq queue. Only the job id travels: rq's admin shows job arguments.

    django-rq defers the enqueue to the end of the surrounding database transaction (COMMIT_MODE
    on_db_commit), so a worker never picks up a job whose row it cannot see yet.
    """
    name = PRIORITY_QUEUES[job.priority]
    queue = _queues.get(name)
    if queue is None:
        queue = _queues[name] = django_rq.get_queue(name)
    queue.enqueue(
        "queries.tasks.run_job",
        str(job.id),
        job_id=job.rq_job_id or str(job.id),
        job_timeout=settings.RQ_JOB_TIMEOUT,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        description=f"run job {job.id}",
        # The worker picks a CLI started ahead of time by these, without a database query.
        meta=pool.job_meta(model=job.model, servers=job.mcp_servers),
    )


# --- run -------------------------------------------------------------------------------------------


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_run(*, job_id: uuid.UUID | str) -> Job | None:
    """Claim a queued job, run the CLI for it, and record the outcome.

    Returns the finished job, or None if another worker had claimed it (or it was cancelled).
    """
    claimed = Job.objects.filter(id=job_id, state=Job.State.QUEUED).update(
        state=Job.State.RUNNING, started_at=timezone.now(), worker_name=_worker_name(), progress=0
    )
    if claimed != 1:
        logger.info("job %s was not queued any more; skipping it", job_id)
        return None
    job = Job.objects.get(id=job_id)
    try:
        if job.use_cache and settings.CACHE_ENABLED:
            entry = cache_get(query_hash=job.hash)
            if entry is not None:
                return _job_complete_from_cache(job=job, entry=entry)
        refusal = quotas.job_budget_refusal(job=job)
        if refusal is not None:
            return job_fail(job=job, error_type=Job.ErrorType.BUDGET_EXCEEDED, message=refusal)
        return _job_execute(job=job)
    except Exception as exc:
        logger.exception("job %s failed inside the gateway", job.id)
        job_fail(job=job, error_type=Job.ErrorType.INTERNAL_ERROR, message=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        dedup_release(query_hash=job.hash, job_id=job.id)


def _job_execute(*, job: Job) -> Job:
    try:
        route = route_for_job(intent=job.intent, server_names=job.mcp_servers)
    except McpUnavailable as exc:
        return job_fail(job=job, error_type=Job.ErrorType.MCP_UNAVAILABLE, message=str(exc))
    invocation = pool.invocation_for(prompt=job.query, model=job.model, route=route)
    logs.secrets_register_mcp(invocation.mcp_config)

    def on_start(pid: int) -> None:
        Job.objects.filter(id=job.id).update(progress=10, cli_pid=pid)
        metrics.cli_started(job_id=job.id, expected_end=time.time() + settings.RQ_JOB_TIMEOUT)

    config = runner.RunnerConfig.from_settings()
    outcome = runner.run_claude(
        invocation,
        config,
        on_start=on_start,
        should_cancel=lambda: job_cancel_requested(job_id=job.id),
        warm=pool.pool_claim(invocation=invocation, config=config),
    )
    _record_cli_output(job=job, outcome=outcome)
    metrics.cli_run_observed(job=job, outcome=outcome)
    if not outcome.ok:
        return job_fail(
            job=job,
            error_type=outcome.error_type or Job.ErrorType.CLI_ERROR,
            message=outcome.error_message,
            extra_fields=["cli_output", "exit_code", "stderr_tail", *_USAGE_FIELDS],
        )

    job.progress = 80
    job.save(update_fields=["progress", "response", "cli_output", "exit_code", "stderr_tail", *_USAGE_FIELDS])
    # Cache before the job is marked completed: a submission that finds the in-flight mark naming a
    # finished job goes to the cache next, and must find the answer there. A noCache submission's
    # answer is cached too: noCache skips the lookup, not the store.
    if settings.CACHE_ENABLED and route.cacheable and cache_put(job=job, ttl=route.cache_ttl):
        Job.objects.filter(id=job.id).update(progress=90)
    return _job_finish(job=job, state=Job.State.COMPLETED)


_USAGE_FIELDS = [
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "duration_ms",
    "num_turns",
    "session_id",
]


def _record_cli_output(*, job: Job, outcome: runner.ClaudeOutcome) -> None:
    data = outcome.data or {}
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    job.cli_output = outcome.data
    job.exit_code = outcome.exit_code
    job.stderr_tail = outcome.stderr[-8192:] if not outcome.ok else ""
    job.response = data.get("result") if outcome.ok and isinstance(data.get("result"), str) else ""
    job.cost_usd = _decimal(data.get("total_cost_usd"))
    job.input_tokens = _count(usage.get("input_tokens"))
    job.output_tokens = _count(usage.get("output_tokens"))
    job.cache_read_input_tokens = _count(usage.get("cache_read_input_tokens"))
    job.cache_creation_input_tokens = _count(usage.get("cache_creation_input_tokens"))
    job.duration_ms = _count(data.get("duration_ms"))
    job.num_turns = _count(data.get("num_turns"))
    job.session_id = str(data.get("session_id") or "")[:100]
    if not job.model and isinstance(data.get("modelUsage"), dict) and data["modelUsage"]:
        job.model = str(next(iter(data["modelUsage"])))[:100]
        job.save(update_fields=["model"])


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _decimal(value: Any) -> Decimal | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value)).quantize(Decimal("0.000001"))
    except InvalidOperation:
        return None


def _job_complete_from_cache(*, job: Job, entry: dict[str, Any]) -> Job:
    """Another job answered the same query while this one waited: reuse that answer."""
    result = entry["result"] or {}
    usage = result.get("usage") or {}
    job.response = result.get("response") or ""
    job.served_from_cache = True
    job.session_id = result.get("sessionId") or ""
    job.num_turns = result.get("numTurns")
    job.duration_ms = result.get("durationMs")
    job.input_tokens = usage.get("inputTokens")
    job.output_tokens = usage.get("outputTokens")
    job.cache_read_input_tokens = usage.get("cacheReadInputTokens")
    job.cache_creation_input_tokens = usage.get("cacheCreationInputTokens")
    job.model = job.model or (result.get("model") or "")
    job.cost_usd = Decimal(0)  # nothing was spent on this execution
    job.save(update_fields=["response", "served_from_cache", "model", *_USAGE_FIELDS])
    return _job_finish(job=job, state=Job.State.COMPLETED)


def _job_finish(*, job: Job, state: str, extra_fields: Iterable[str] = ()) -> Job:
    # Cleared before the final state is written, so whoever sees the job finished sees no mark either.
    # A submission in between finds no mark and makes a new job: the cache holds a success's answer
    # already, and a failure's answer is never reused.
    dedup_release(query_hash=job.hash, job_id=job.id)
    job.state = state
    job.progress = 100
    job.finished_at = timezone.now()
    job.save(update_fields=["state", "progress", "finished_at", "error_type", "error_message", *extra_fields])
    logger.info("job %s %s", job.id, state)
    job_finished(job=job)
    return job


# --- what follows an outcome -------------------------------------------------------------------------


def request_recorded(*, request: QueryRequest) -> None:
    """A joined or cache-answered request was recorded; its outcome may already be known."""
    metrics.request_counted(request=request)
    webhook_services.webhook_on_request(request=request)


def job_finished(*, job: Job) -> None:
    """A job reached a final state: every request that points to it now has its outcome."""
    quotas.quota_jobs_release(job=job)
    metrics.job_finished_counted(job=job)
    logs.job_failure_log(job=job)
    webhook_services.webhook_on_job_finished(job=job)


def job_fail(*, job: Job, error_type: str, message: str, extra_fields: Iterable[str] = ()) -> Job:
    """Record a job's failure (state ``cancelled`` for error type ``cancelled``). Errors are never cached."""
    job.error_type = error_type
    job.error_message = message[:10_000]
    state = Job.State.CANCELLED if error_type == Job.ErrorType.CANCELLED else Job.State.FAILED
    return _job_finish(job=job, state=state, extra_fields=extra_fields)


def job_orphans_fail(*, idle_pid: int | None = None) -> int:
    """Fail, as ``worker_lost``, the running jobs of this host whose worker process is gone; returns
    how many. ``idle_pid`` is a process known to run no job now (the caller, between jobs): a job
    naming it was left by a dead process whose pid it reuses.

    A worker that runs jobs in its own process takes its job down with it when it dies; the worker
    that replaces it and every worker's maintenance call this.
    """
    host = socket.gethostname()
    running = Job.objects.filter(state=Job.State.RUNNING, worker_name__startswith=f"{host}:")
    failed = 0
    for job_id, worker_name in running.values_list("id", "worker_name"):
        try:
            pid = int(worker_name.rpartition(":")[2])
        except ValueError:
            continue
        if pid != idle_pid and _process_alive(pid):
            continue
        if job_worker_lost(job_id=job_id, reason="The worker process running it died."):
            failed += 1
    return failed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return True  # no /proc: the signal check is all there is
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def job_worker_lost(*, job_id: uuid.UUID | str, reason: str) -> bool:
    """Fail a running job whose worker died, killing its CLI if it runs on this host.

    Returns False if the job was not running (it finished, or someone else settled it).
    """
    job = Job.objects.filter(id=job_id, state=Job.State.RUNNING).first()
    if job is None:
        return False
    host = job.worker_name.rpartition(":")[0]
    if job.cli_pid and host == socket.gethostname():
        runner.kill_orphaned_group(job.cli_pid)
    settled = Job.objects.filter(id=job.id, state=Job.State.RUNNING).update(
        state=Job.State.FAILED,
        error_type=Job.ErrorType.WORKER_LOST,
        error_message=reason,
        progress=100,
        finished_at=timezone.now(),
    )
    dedup_release(query_hash=job.hash, job_id=job.id)
    if settled:
        logger.warning("job %s: %s", job.id, reason)
        job.refresh_from_db()
        job_finished(job=job)
    return bool(settled)


# --- operators: cancel, retry, reconcile, purge ------------------------------------------------------

# Set by job_cancel for a running job; the worker running it polls for the key and stops the CLI.
CANCEL_KEY = "cancel:{}"
CACHE_PURGE_BATCH = 500
_HASH_CHARS = frozenset("0123456789abcdef")


class OperationRefused(Exception):
    """An operator's action does not apply: the job is unknown or in a state the action cannot change."""


def job_cancel_requested(*, job_id: uuid.UUID | str) -> bool:
    """Whether an operator asked to cancel this job. Called every 0.2 s while its CLI runs."""
    try:
        return bool(redis_client().exists(CANCEL_KEY.format(job_id)))
    except RedisError:
        return False


def job_cancel(*, job_id: uuid.UUID | str, reason: str = "Cancelled by an operator.") -> str:
    """Cancel a queued or running job; returns ``cancelled`` or ``cancelling``.

    A queued job is settled at once (``cancelled``): its rq entry is removed, its in-flight mark
    released and ``job_finished`` fires, so callers' webhooks get ``query.failed``. A running job
    (``cancelling``) is stopped by its worker within a second: the CLI's whole process group is
    killed and the worker records the cancellation, with the same hooks. A running job whose worker
    is gone stays running until ``reconcile`` settles it as ``worker_lost``.
    """
    job = _job_or_refuse(job_id)
    if job.state == Job.State.QUEUED:
        settled = Job.objects.filter(id=job.id, state=Job.State.QUEUED).update(
            state=Job.State.CANCELLED,
            error_type=Job.ErrorType.CANCELLED,
            error_message=reason[:10_000],
            progress=100,
            finished_at=timezone.now(),
        )
        if settled:
            _rq_job_cancel(job=job)
            dedup_release(query_hash=job.hash, job_id=job.id)
            job.refresh_from_db()
            logger.info("job %s cancelled while queued", job.id)
            job_finished(job=job)
            return "cancelled"
        job.refresh_from_db()  # a worker claimed it in between: cancel it as a running job
    if job.state == Job.State.RUNNING:
        try:
            redis_client().set(CANCEL_KEY.format(job.id), reason[:500], ex=settings.RQ_JOB_TIMEOUT)
        except RedisError as exc:
            raise OperationRefused(f"Redis is unavailable, so the worker cannot be told: {exc}") from exc
        logger.info("job %s: cancellation requested", job.id)
        return "cancelling"
    raise OperationRefused(f"Job {job.id} is {job.state}: only queued or running jobs can be cancelled.")


def _rq_job_cancel(*, job: Job) -> None:
    """Take a cancelled job's entry off its rq queue. Best effort: job_run skips a job that is not queued."""
    queue = django_rq.get_queue(PRIORITY_QUEUES[job.priority])
    try:
        queue.remove(job.rq_job_id or str(job.id))
    except RedisError:
        logger.warning("could not remove job %s from its rq queue; the worker will skip it", job.id)


def _job_or_refuse(job_id: uuid.UUID | str) -> Job:
    try:
        job = Job.objects.filter(id=job_id).first()
    except (ValueError, TypeError, DjangoValidationError):
        job = None
    if job is None:
        raise OperationRefused(f"No job with id {job_id!r}.")
    return job


@dataclass(frozen=True)
class Retry:
    """What retrying a job led to: a new job, or the identical job already in flight."""

    job: Job
    created: bool


def job_retry(*, job_id: uuid.UUID | str) -> Retry:
    """Run a failed or cancelled job again as a new Job linked by ``retry_of``; the old record stays.

    The retry claims the in-flight mark as a submission would: identical submissions join it instead
    of starting another run, and if an identical job is already in flight that job is the answer and
    nothing new is queued. Requests stay with the job that answered them (their callers already had
    the failure, by GET and webhook); a caller that submits the query again joins the retry or gets
    its cached answer. The retry is the operator's run: no key's concurrency slot or budget is used.
    """
    old = _job_or_refuse(job_id)
    if old.state not in (Job.State.FAILED, Job.State.CANCELLED):
        raise OperationRefused(f"Job {old.id} is {old.state}: only failed or cancelled jobs can be retried.")
    already = old.retries.order_by("-created_at").first()
    if already is not None:
        raise OperationRefused(f"Job {old.id} was already retried as {already.id}; retry that one instead.")
    new_id = uuid.uuid4()
    redis = redis_client()
    if settings.DEDUP_ENABLED:
        in_flight = _dedup_claim_for(query_hash=old.hash, job_id=new_id, redis=redis)
        if in_flight is not None:
            return Retry(job=in_flight, created=False)
    retry = Job.objects.create(
        id=new_id,
        hash=old.hash,
        query=old.query,
        normalized_query=old.normalized_query,
        priority=old.priority,
        model=old.model,
        intent=old.intent,
        mcp_servers=old.mcp_servers,
        use_cache=old.use_cache,
        rq_job_id=str(new_id),
        retry_of=old,
    )
    try:
        job_enqueue(job=retry)
    except RedisError as exc:
        job_fail(
            job=retry,
            error_type=Job.ErrorType.QUEUE_UNAVAILABLE,
            message=f"The job could not be queued: {exc}",
        )
        dedup_release(query_hash=retry.hash, job_id=retry.id, redis=redis)
        raise OperationRefused(f"The queue is unavailable: {exc}") from exc
    logger.info("job %s retried as %s", old.id, retry.id)
    return Retry(job=retry, created=True)


def _dedup_claim_for(*, query_hash: str, job_id: uuid.UUID, redis: Redis) -> Job | None:
    """Claim the in-flight mark for ``job_id``; returns the live job holding it instead, if any."""
    key = DEDUP_KEY.format(query_hash)
    try:
        for _ in range(SUBMIT_ATTEMPTS):
            if redis.set(key, str(job_id), nx=True, ex=settings.DEDUP_TTL):
                return None
            holder = redis.get(key)
            if holder is None:
                continue
            holder_id = holder.decode() if isinstance(holder, bytes) else str(holder)
            job = _wait_for_job(holder_id)
            if job is not None and not job.is_finished:
                return job
            dedup_release(query_hash=query_hash, job_id=holder_id, redis=redis)
    except RedisError as exc:
        raise OperationRefused(f"Redis is unavailable: {exc}") from exc
    raise OperationRefused("An identical query kept starting and finishing; try again.")


def jobs_retry_failed(*, since: datetime) -> list[tuple[Job, Retry | None, str]]:
    """Retry every job that failed at or after ``since`` and has not been retried yet.

    Returns ``(failed job, retry or None, problem)`` for each, oldest first; cancelled jobs are left
    alone (someone meant to stop them).
    """
    failed = Job.objects.filter(state=Job.State.FAILED, finished_at__gte=since, retries__isnull=True)
    outcomes: list[tuple[Job, Retry | None, str]] = []
    for job in failed.order_by("finished_at"):
        try:
            outcomes.append((job, job_retry(job_id=job.id), ""))
        except OperationRefused as exc:
            outcomes.append((job, None, str(exc)))
    return outcomes


def _rq_jobs_in_progress(*, redis: Redis) -> set[str]:
    """The rq job ids that live workers report executing."""
    current = set()
    for worker in RqWorker.all(connection=redis):
        for execution in worker.get_current_executions(refresh=True):
            current.add(str(execution.job_id))
    return current


def job_reconcile_stale(
    *, grace_seconds: float = 60.0, retry: bool = False
) -> list[tuple[Job, Retry | None]]:
    """Settle running jobs whose worker is gone as ``worker_lost`` (and retry them if asked).

    A job counts as orphaned when it has run for longer than ``grace_seconds``, no live rq worker
    reports it as its current job, and, when it ran on this host, its process is gone. rq forgets a
    worker that stopped sending heartbeats after its TTL, so a crash is found within minutes.
    """
    redis = redis_client()
    cutoff = timezone.now() - timedelta(seconds=grace_seconds)
    candidates = list(Job.objects.filter(state=Job.State.RUNNING, started_at__lt=cutoff))
    if not candidates:
        return []
    in_progress = _rq_jobs_in_progress(redis=redis)
    host = socket.gethostname()
    settled: list[tuple[Job, Retry | None]] = []
    for job in candidates:
        if (job.rq_job_id or str(job.id)) in in_progress:
            continue
        job_host, _, pid = job.worker_name.rpartition(":")
        if job_host == host and pid.isdigit() and _process_alive(int(pid)):
            continue
        reason = "No live worker was running this job (found by reconcile)."
        if not job_worker_lost(job_id=job.id, reason=reason):
            continue
        job.refresh_from_db()
        retried = None
        if retry:
            try:
                retried = job_retry(job_id=job.id)
            except OperationRefused as exc:
                logger.warning("job %s: could not retry it: %s", job.id, exc)
        settled.append((job, retried))
    return settled


def jobs_requeue_lost(*, grace_seconds: float = 60.0) -> list[Job]:
    """Enqueue again the queued jobs whose rq entry is gone (a Redis flush); the row is the truth."""
    redis = redis_client()
    cutoff = timezone.now() - timedelta(seconds=grace_seconds)
    requeued = []
    for job in Job.objects.filter(state=Job.State.QUEUED, created_at__lt=cutoff).order_by("created_at"):
        if RqJob.exists(job.rq_job_id or str(job.id), connection=redis):
            continue
        if settings.DEDUP_ENABLED:
            # Identical submissions should join this job again rather than start their own.
            redis.set(DEDUP_KEY.format(job.hash), str(job.id), nx=True, ex=settings.DEDUP_TTL)
        job_enqueue(job=job)
        requeued.append(job)
    return requeued


def cache_hash_check(value: str) -> str:
    """The hash in canonical form (64 lowercase hex characters), or ValueError."""
    text = value.strip().lower()
    if len(text) != 64 or not set(text) <= _HASH_CHARS:
        raise ValueError(f"{value!r} is not a query hash (64 hexadecimal characters).")
    return text


def cache_purge(*, query_hashes: Iterable[str], redis: Redis | None = None) -> int:
    """Delete the cached answers of these hashes; returns how many existed."""
    keys = sorted({CACHE_KEY.format(cache_hash_check(h)) for h in query_hashes})
    if not keys:
        return 0
    return int((redis or redis_client()).delete(*keys))


def cache_purge_all(*, batch: int = CACHE_PURGE_BATCH, redis: Redis | None = None) -> int:
    """Delete every cached answer (``claude:*``) and nothing else; returns how many were deleted.

    SCAN walks the keyspace in steps without blocking Redis (KEYS would, for as long as it takes),
    and each batch goes in one pipelined UNLINK, which frees memory outside Redis's main thread.
    """
    redis = redis or redis_client()
    deleted = 0
    pending: list[bytes] = []

    def flush() -> int:
        pipe = redis.pipeline(transaction=False)
        for key in pending:
            pipe.unlink(key)
        count = sum(int(n) for n in pipe.execute())
        pending.clear()
        return count

    for key in redis.scan_iter(match=CACHE_KEY.format("*"), count=batch):
        pending.append(key)
        if len(pending) >= batch:
            deleted += flush()
    if pending:
        deleted += flush()
    return deleted


# --- reading ---------------------------------------------------------------------------------------


def job_get_for_caller(*, job_id: uuid.UUID, api_key: ApiKey | None) -> Job | None:
    """The job if one of the caller's own requests points to it (anonymous callers: anonymous requests)."""
    own = QueryRequest.objects.filter(job_id=OuterRef("pk"))
    own = own.filter(api_key=api_key) if api_key is not None else own.filter(api_key__isnull=True)
    job = Job.objects.filter(id=job_id).filter(Exists(own)).first()
    if job is None and settings.CACHE_HIT_JOURNAL:
        # The caller may have received this job's answer from the cache a moment ago, its request
        # still in the journal (with CACHE_SCOPE=global; with key scope its own request made the job).
        try:
            journal.journal_drain()
        except (RedisError, DatabaseError):
            logger.warning("could not write journaled requests", exc_info=True)
            return None
        job = Job.objects.filter(id=job_id).filter(Exists(own)).first()
    return job


# --- API keys --------------------------------------------------------------------------------------


def api_key_create(*, name: str, limits: dict[str, Any] | None = None) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plaintext key, which is stored nowhere and shown once.

    ``limits`` sets ApiKey's limit fields (expires_at, rate_limit_per_minute, ...); a bad value raises
    django.core.exceptions.ValidationError.
    """
    name = name.strip()
    if not name:
        raise ValueError("An API key needs a name.")
    key = ApiKey.PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey(name=name[:100], prefix=key[:12], key_hash=ApiKey.hash_key(key), **(limits or {}))
    api_key.full_clean(exclude=["key_hash"])
    api_key.save()
    return api_key, key


def api_key_revoke(*, api_key: ApiKey) -> bool:
    """Refuse the key from now on (401); False if it was already revoked. The row and its history stay."""
    revoked = bool(ApiKey.objects.filter(pk=api_key.pk, is_active=True).update(is_active=False))
    api_keys_changed()  # update() sends no signal: tell every process's key cache
    return revoked
