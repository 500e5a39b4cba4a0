"""Operators' actions on jobs: cancel, retry, and reconcile the database with Redis."""

from __future__ import annotations

import logging
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import django_rq
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from redis import Redis
from redis.exceptions import RedisError
from rq import Worker as RqWorker
from rq.job import Job as RqJob

from claude_cli.process import process_alive
from core.redis import redis_client
from queries.models import PRIORITY_QUEUES, Job, SessionMode
from queries.services.dedup import (
    DEDUP_KEY,
    SUBMIT_ATTEMPTS,
    dedup_holder,
    dedup_release,
    dedup_wait_for_job,
)
from queries.services.run import CANCEL_KEY, job_enqueue, job_fail, job_finished, job_worker_lost

logger = logging.getLogger(__name__)


class OperationRefused(Exception):
    """An operator's action does not apply: the job is unknown or in a state the action cannot change."""


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
        prompt_content=old.prompt_content,
        system_prompt=old.system_prompt,
        normalized_query=old.normalized_query,
        priority=old.priority,
        model=old.model,
        intent=old.intent,
        mcp_servers=old.mcp_servers,
        use_cache=old.use_cache,
        rq_job_id=str(new_id),
        retry_of=old,
        session_parent=old.session_parent,
        lineage_prefix=old.lineage_prefix,
        turn_content=old.turn_content,
        turn_number=old.turn_number,
        session_mode=SessionMode.RESUMED if old.session_parent_id else SessionMode.FRESH,
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
            holder_id = dedup_holder(query_hash=query_hash, redis=redis)
            if holder_id is None:
                continue
            job = dedup_wait_for_job(holder_id)
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
        if job_host == host and pid.isdigit() and process_alive(int(pid)):
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
