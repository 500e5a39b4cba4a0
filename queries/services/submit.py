"""Submitting a query: answer it from the cache, join an identical job in flight, or queue a new one.

Every call records a QueryRequest (a journaled cache hit within about a second, journal.py).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError
from django.db.models import Exists, OuterRef
from django.utils import timezone
from redis import Redis
from redis.exceptions import RedisError

from core import logs, metrics
from core.errors import GatewayError, Overloaded
from core.redis import redis_client
from core.redis_loop import loop_redis
from queries import quotas
from queries.auth import cache_scope
from queries.lineage import History
from queries.models import ApiKey, Job, Priority, QueryRequest
from queries.prompts import API_NATIVE, APIS, Prompt
from queries.services import journal, sessions
from queries.services.breaker import breaker_refusal
from queries.services.cache import CACHE_KEY, cache_get, normalize_query, query_hash
from queries.services.dedup import (
    DEDUP_KEY,
    SUBMIT_ATTEMPTS,
    dedup_active_job,
    dedup_holder,
    dedup_release,
    dedup_wait_for_job,
)
from queries.services.events import events_append
from queries.services.run import job_enqueue, job_fail, request_recorded
from routing.services import Route, route_query, route_query_held

logger = logging.getLogger(__name__)


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


def _query_route_and_hash(
    *,
    api_key: ApiKey | None,
    query: str,
    model: str | None,
    prompt: Prompt | None = None,
    lineage: str | None = None,
) -> tuple[str, Route, str]:
    normalized = normalize_query(query)
    route = route_query(query=query)
    digest = query_hash(
        normalized=normalized,
        model=model,
        servers=route.server_names,
        scope=cache_scope(api_key=api_key),
        prompt=prompt.key_fields() if prompt is not None else None,
        lineage=lineage,
    )
    return normalized, route, digest


def _query_hash(*, api_key: ApiKey | None, query: str, model: str | None, route: Route) -> str:
    """_query_route_and_hash's hash for a plain query whose route is known."""
    return query_hash(
        normalized=normalize_query(query),
        model=model,
        servers=route.server_names,
        scope=cache_scope(api_key=api_key),
    )


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
    api: str = API_NATIVE,
) -> dict[str, Any]:
    return {
        "api_key": api_key,
        "api": api,
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
    query: str = "",
    priority: str = Priority.NORMAL,
    model: str | None = None,
    keys_version: bytes | None = None,
    prompt: Prompt | None = None,
    api: str = API_NATIVE,
) -> Submission | None:
    """The cache's answer, journaled and counted, or None with nothing recorded (then use query_submit).

    What query_submit does first for a query with no webhook, metadata or noCache, on its own: the
    APIs answer a cache hit with it before any of the full request handling (queries/hits.py,
    compat/hits.py: a /v1/ call's ``prompt`` and ``api``, whose history never changes the key).
    Raises KeyNotPermitted as query_submit does, and journal.KeysChanged when ``keys_version`` (the API
    keys version ``api_key`` was read at, queries.auth) is no longer current.
    """
    if not (settings.CACHE_ENABLED and settings.CACHE_HIT_JOURNAL):
        return None
    if api not in APIS:
        raise ValueError(f"unknown api {api!r}")
    if prompt is not None and not query:
        query = prompt.text()
    quotas.api_key_authorize(api_key=api_key, priority=priority, model=model)
    _, route, digest = _query_route_and_hash(api_key=api_key, query=query, model=model, prompt=prompt)
    if not route.cacheable:
        return None
    fields = _request_fields(
        api_key=api_key, query=query, digest=digest, priority=priority, model=model, api=api
    )
    return _submit_from_cache_journaled(
        query_hash=digest, redis=redis_client(), request_fields=fields, keys_version=keys_version
    )


async def query_cache_answer_on_loop(
    *,
    api_key: ApiKey,
    query: str,
    priority: str = Priority.NORMAL,
    model: str | None = None,
    keys_version: bytes | None,
) -> Submission | None:
    """query_cache_answer on the event loop, its round trip over redis.asyncio: the same checks, the
    same script, the same record and count, without a thread.

    Raises NeedsThread when an answer would need a database read (the routing rules are due for
    reloading) or a Redis this loop's client does not speak (TLS): query_cache_answer, on a thread,
    gives it. Raises RedisError where query_cache_answer
    treats it as a miss, so that the caller hands the request to the full path.
    """
    if not (settings.CACHE_ENABLED and settings.CACHE_HIT_JOURNAL):
        return None
    quotas.api_key_authorize(api_key=api_key, priority=priority, model=model)
    route = route_query_held(query=query)
    if route is None:
        raise NeedsThread
    if not route.cacheable:
        return None
    redis = loop_redis()
    if redis is None:
        raise NeedsThread
    digest = _query_hash(api_key=api_key, query=query, model=model, route=route)
    fields = _request_fields(api_key=api_key, query=query, digest=digest, priority=priority, model=model)
    record = _journal_record(fields)
    raw = await journal.journal_cache_hit_on_loop(
        cache_key=CACHE_KEY.format(digest),
        record=record,
        redis=redis,
        keys_version=keys_version,
    )
    return None if raw is None else _cached_submission(record, raw)


class NeedsThread(Exception):
    """The answer needs a blocking call: ask for it from a thread."""


def query_submit(
    *,
    api_key: ApiKey | None,
    query: str = "",
    priority: str = Priority.NORMAL,
    model: str | None = None,
    webhook_url: str = "",
    metadata: dict[str, Any] | None = None,
    no_cache: bool = False,
    prompt: Prompt | None = None,
    api: str = API_NATIVE,
    session_id: str | None = None,
    history: History | None = None,
) -> Submission:
    """Answer from the cache, join an identical in-flight job, or queue a new one.

    Every call records a QueryRequest (with the ``api`` it came through). N identical concurrent
    calls make exactly one Job: the in-flight mark is claimed with SET NX before the Job row exists.
    ``prompt`` carries content blocks and a system prompt (queries.prompts); ``query`` is then its
    text unless given. Without one, ``query`` is the whole prompt, as it always was.

    A turn of a conversation (queries.services.sessions) continues the session ``session_id`` names
    (native; NotFound when the caller may not), or, for ``history`` (a /v1 request's turns, whose
    last user message ends ``prompt``), the session its earlier turns match, if any.
    """
    if api not in APIS:
        raise ValueError(f"unknown api {api!r}")
    if prompt is not None and not query:
        query = prompt.text()
    quotas.api_key_authorize(api_key=api_key, priority=priority, model=model)
    if history is not None:
        continuation = sessions.continuation_of_history(history=history, api_key=api_key)
    else:
        continuation = sessions.continuation_native(session_id=session_id, api_key=api_key)
    normalized, route, digest = _query_route_and_hash(
        api_key=api_key, query=query, model=model, prompt=prompt, lineage=continuation.hash_scope
    )
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
        api=api,
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
            # A new job while the upstream is failing would only wait or fail: refuse it (cache hits
            # and joins above are still served).
            refusal = breaker_refusal(redis=redis)
            if refusal is not None:
                raise refusal
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
            prompt=prompt,
            job_fields=continuation.job_fields(),
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
    record = _journal_record(request_fields)
    try:
        raw = journal.journal_cache_hit(
            cache_key=CACHE_KEY.format(query_hash), record=record, redis=redis, keys_version=keys_version
        )
    except RedisError:
        logger.warning("cache lookup failed; treating as a miss", exc_info=True)
        return None
    if raw is None:
        return None
    return _cached_submission(record, raw)


def _journal_record(request_fields: dict[str, Any]) -> journal.JournalRecord:
    api_key = request_fields["api_key"]
    return journal.JournalRecord(
        id=request_fields["id"],
        api_key_id=api_key.pk if api_key is not None else None,
        query=request_fields["query"],
        hash=request_fields["hash"],
        priority=request_fields["priority"],
        model=request_fields["model"],
        metadata=request_fields["metadata"],
        no_cache=request_fields["no_cache"],
        created_at=timezone.now(),
        api=request_fields["api"],
    )


def _cached_submission(record: journal.JournalRecord, raw: bytes) -> Submission:
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
        holder_id = dedup_holder(query_hash=query_hash, redis=redis)
    except RedisError as exc:
        raise Overloaded("The queue is unavailable; try again shortly.") from exc
    if holder_id is None:
        return None
    job = dedup_wait_for_job(holder_id)
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


def _submit_new_job(
    *,
    job_id: uuid.UUID,
    query_hash: str,
    normalized: str,
    route: Route,
    no_cache: bool,
    redis: Redis,
    request_fields: dict[str, Any],
    job_fields: dict[str, Any],
    prompt: Prompt | None = None,
) -> Submission:
    # Autocommit: the row is visible at once to identical submissions waiting in _wait_for_job.
    try:
        job = Job.objects.create(
            **job_fields,
            id=job_id,
            hash=query_hash,
            query=request_fields["query"],
            prompt_content=prompt.job_content() if prompt is not None else None,
            system_prompt=prompt.system if prompt is not None else "",
            normalized_query=normalized,
            priority=request_fields["priority"],
            model=request_fields["model"],
            intent=route.intent,
            mcp_servers=route.server_names,
            use_cache=not no_cache and route.cacheable,
            deduplicated=settings.DEDUP_ENABLED,
            rq_job_id=str(job_id),
        )
    except IntegrityError:
        # Redis had no mark, but the database holds an identical job queued or running (a flush lost
        # its mark): join that one (the index job_one_active_per_hash).
        active = dedup_active_job(query_hash=query_hash, job_id=job_id, redis=redis)
        if active is None:
            raise
        api_key = request_fields["api_key"]
        quotas.quota_slot_release(api_key_id=api_key.pk if api_key else None, job_id=job_id, redis=redis)
        request = QueryRequest.objects.create(
            job=active, outcome=QueryRequest.Outcome.DEDUPLICATED, **request_fields
        )
        request_recorded(request=request)
        return Submission.of(request, job_state=active.state)
    request = QueryRequest.objects.create(job=job, outcome=QueryRequest.Outcome.QUEUED, **request_fields)
    # The stream exists from the start, so a reader can tell a queued job from an expired stream.
    events_append(job.id, {"type": "progress", "state": Job.State.QUEUED, "progress": 0})
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
