"""Operators' actions on jobs: cancel, retry, and reconcile the database with Redis."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import django_rq
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.utils import timezone
from redis import Redis
from redis.exceptions import LockError, RedisError
from rq import Queue as RqQueue
from rq import Worker as RqWorker
from rq.job import Job as RqJob

from claude_cli.process import kill_orphaned_group, process_alive
from core.redis import redis_bytes, redis_client
from queries.models import PRIORITY_QUEUES, Job, SessionMode
from queries.services.dedup import (
    DEDUP_KEY,
    SUBMIT_ATTEMPTS,
    dedup_active_job,
    dedup_holder,
    dedup_release,
    dedup_wait_for_job,
)
from queries.services.run import (
    CANCEL_KEY,
    job_enqueue,
    job_fail,
    job_finished,
    job_run,
    job_worker_lost,
)
from queries.services.workers import LiveWorker, workers_alive

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
    try:
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
            deduplicated=settings.DEDUP_ENABLED,
            rq_job_id=str(new_id),
            retry_of=old,
            session_parent=old.session_parent,
            lineage_prefix=old.lineage_prefix,
            turn_content=old.turn_content,
            turn_number=old.turn_number,
            session_mode=SessionMode.RESUMED if old.session_parent_id else SessionMode.FRESH,
        )
    except IntegrityError:
        # An identical job is queued or running though Redis had no mark for it (a flush).
        active = dedup_active_job(query_hash=old.hash, job_id=new_id, redis=redis)
        if active is None:
            raise
        return Retry(job=active, created=False)
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


def _rq_jobs_in_progress(*, redis: Redis, alive: list[LiveWorker]) -> set[str]:
    """The rq job ids that live workers report executing (rq's executions and the gateway's field)."""
    current = {worker.current_job for worker in alive if worker.current_job}
    names = {worker.name for worker in alive}
    for worker in RqWorker.all(connection=redis):
        if worker.name in names:
            current.update(str(e.job_id) for e in worker.get_current_executions(refresh=True))
    return current


def job_reconcile_stale(
    *, grace_seconds: float = 60.0, retry: bool = False
) -> list[tuple[Job, Retry | None]]:
    """Settle running jobs whose worker is gone as ``worker_lost`` (and retry them if asked).

    A job counts as orphaned when it has run for longer than ``grace_seconds``, no live rq worker
    (queries.services.workers: a recent heartbeat) reports it as its current job, and, when it ran on
    this host, its process is gone.
    """
    redis = redis_client()
    cutoff = timezone.now() - timedelta(seconds=grace_seconds)
    candidates = list(Job.objects.filter(state=Job.State.RUNNING, started_at__lt=cutoff))
    if not candidates:
        return []
    in_progress = _rq_jobs_in_progress(redis=redis, alive=workers_alive(redis=redis))
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


# rq's states of a job that no worker will take up again.
_RQ_DONE = {b"finished", b"failed", b"stopped", b"canceled"}


def jobs_requeue_lost(*, grace_seconds: float = 60.0) -> list[Job]:
    """Enqueue again the queued jobs that rq will never run; the row is the truth.

    Lost: the rq job is gone (a Redis flush or restart without persistence), rq counts it as done
    (its worker hit a dead database connection before claiming the row), it is "queued" in rq but on
    no queue (popped by a worker that then lost Redis), or "started" by no live worker. Queuing a job
    twice is harmless: only one worker claims the row (job_run).
    """
    redis = redis_client()
    cutoff = timezone.now() - timedelta(seconds=grace_seconds)
    queued = list(Job.objects.filter(state=Job.State.QUEUED, created_at__lt=cutoff).order_by("created_at"))
    if not queued:
        return []
    pipe = redis.pipeline(transaction=False)
    for job in queued:
        rq_id = job.rq_job_id or str(job.id)
        pipe.hget(RqJob.key_for(rq_id), "status")
        pipe.lpos(RqQueue.redis_queue_namespace_prefix + PRIORITY_QUEUES[job.priority], rq_id)
    replies = pipe.execute()
    running: set[str] | None = None
    requeued = []
    for index, job in enumerate(queued):
        status, position = redis_bytes(replies[2 * index]), replies[2 * index + 1]
        if status == b"started":
            if running is None:
                running = _rq_jobs_in_progress(redis=redis, alive=workers_alive(redis=redis))
            lost = (job.rq_job_id or str(job.id)) not in running
        else:
            lost = status is None or status in _RQ_DONE or (status == b"queued" and position is None)
        if not lost:
            continue
        if settings.DEDUP_ENABLED and job.deduplicated:
            # Identical submissions should join this job again rather than start their own.
            redis.set(DEDUP_KEY.format(job.hash), str(job.id), nx=True, ex=settings.DEDUP_TTL)
        job_enqueue(job=job)
        requeued.append(job)
    return requeued


def job_put_back(*, job_id: uuid.UUID | str) -> bool:
    """Queue again a running job that its worker stopped because the worker itself was stopping.

    Its CLI, if still alive on this host, is killed first. Returns False if the job was not running.
    """
    job = Job.objects.filter(id=job_id, state=Job.State.RUNNING).first()
    if job is None:
        return False
    if job.cli_pid and job.worker_name.rpartition(":")[0] == socket.gethostname():
        kill_orphaned_group(job.cli_pid)
    put_back = Job.objects.filter(id=job.id, state=Job.State.RUNNING).update(
        state=Job.State.QUEUED, progress=0, started_at=None, worker_name="", cli_pid=None
    )
    if not put_back:
        return False
    job.refresh_from_db()
    if settings.DEDUP_ENABLED and job.deduplicated:
        redis_client().set(DEDUP_KEY.format(job.hash), str(job.id), nx=True, ex=settings.DEDUP_TTL)
    job_enqueue(job=job)
    logger.info("job %s: its worker stopped; queued again", job.id)
    return True


def job_run_again(*, job_id: uuid.UUID | str) -> Job | None:
    """Run a job again after the database dropped its worker's connection under it (a restart or
    failover of PostgreSQL); call it on a fresh connection.

    If the first try had claimed the row (running under this process's name), the row is made
    queued again first; a job another worker holds, or that has ended, is left alone (job_run
    returns None). If this try fails too, the sweep settles the job: queued ones are queued again,
    and one left running here ends ``worker_lost`` (job_orphans_fail).
    """
    Job.objects.filter(
        id=job_id, state=Job.State.RUNNING, worker_name=f"{socket.gethostname()}:{os.getpid()}"
    ).update(state=Job.State.QUEUED, progress=0, started_at=None, worker_name="", cli_pid=None)
    return job_run(job_id=job_id)


@dataclass(frozen=True)
class Reconciliation:
    """What one reconciliation pass did: running jobs settled as worker_lost, queued jobs re-queued."""

    lost: list[tuple[Job, Retry | None]]
    requeued: list[Job]


RECONCILE_LOCK = "reconcile:lock"
RECONCILE_LOCK_TIMEOUT = 120


def jobs_reconcile(
    *,
    grace_seconds: float,
    retry: bool = False,
    settle_running: bool = True,
    requeue_grace: float | None = None,
    wait: float = 0.0,
) -> Reconciliation | None:
    """One pass of job_reconcile_stale (when ``settle_running``) and jobs_requeue_lost, under the
    Redis lock ``reconcile:lock`` so that one process at a time does it.

    ``requeue_grace`` (default ``grace_seconds``) is how old a queued job must be to be queued
    again: it may be short, since a job queued twice still runs once. Returns None when another
    process held the lock for longer than ``wait`` seconds. Workers call
    it after a Redis outage and every WEBHOOK_SWEEP_INTERVAL (queries/worker.py); ``manage.py
    reconcile`` waits for its turn. Raises RedisError.
    """
    lock = redis_client().lock(RECONCILE_LOCK, timeout=RECONCILE_LOCK_TIMEOUT)
    if not lock.acquire(blocking=wait > 0, blocking_timeout=wait or None):
        return None
    try:
        lost = job_reconcile_stale(grace_seconds=grace_seconds, retry=retry) if settle_running else []
        requeued = jobs_requeue_lost(grace_seconds=grace_seconds if requeue_grace is None else requeue_grace)
        return Reconciliation(lost=lost, requeued=requeued)
    finally:
        try:
            lock.release()
        except (LockError, RedisError):
            logger.warning("the reconcile lock expired or Redis went away before it was released")
