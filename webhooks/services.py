"""Webhooks: URL safety checks, and signed, retried, recorded delivery of outcomes to callers.

Every QueryRequest with a webhook URL gets exactly one WebhookDelivery once its outcome is known.
The delivery row is the truth (state, attempts, ``next_attempt_at``); rq jobs only carry its id and
may be lost, because ``webhook_deliveries_sweep`` re-enqueues whatever is due.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import django_rq
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from redis.exceptions import RedisError
from rq.job import JobStatus

from core import metrics, outbound
from core.redis import redis_client
from queries.models import ApiKey, Job, QueryRequest
from webhooks import signing
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSecret

logger = logging.getLogger(__name__)

# Deliveries are short (bounded by WEBHOOK_TIMEOUT) and their result already cost a CLI run, so they
# go on the queue workers take first instead of waiting behind queued CLI runs.
WEBHOOK_QUEUE = "high"
TASK = "webhooks.tasks.deliver_webhook"
# A claimed try holds the delivery this long past its timeout; if its worker dies, the sweeper
# takes the delivery up again after that.
CLAIM_MARGIN = 60
RETRY_AFTER_MAX = 24 * 3600
RESPONSE_EXCERPT_CHARS = 2000
SECRET_ROTATION_GRACE = timedelta(hours=24)
# The sweeper also creates deliveries that a crash kept from being created, for requests this recent.
MISSING_DELIVERY_WINDOW = timedelta(days=1)
SWEEP_BATCH = 500


# --- creating deliveries -----------------------------------------------------------------------------


def webhook_on_request(*, request: QueryRequest) -> None:
    """A cache-answered or joined request was recorded: deliver now if its job has finished.

    A joined request may race with its job finishing; whichever of this hook and the job's sees the
    finished state first creates the delivery, and the unique constraint stops the other.
    """
    if not request.webhook_url:
        return
    try:
        job = Job.objects.get(id=request.job_id)
        if job.is_finished:
            webhook_delivery_create(request=request, job=job)
    except Exception:
        # The request is answered whatever happens here; the sweeper creates a missing delivery.
        logger.exception("could not create the webhook delivery of request %s", request.id)


def webhook_on_job_finished(*, job: Job) -> None:
    """A job reached a final state: one delivery for each of its requests that asked for a webhook."""
    try:
        requests = QueryRequest.objects.filter(job=job, webhook_delivery__isnull=True).exclude(webhook_url="")
        for request in requests:
            webhook_delivery_create(request=request, job=job)
    except Exception:
        logger.exception("could not create the webhook deliveries of job %s", job.id)


def webhook_event(*, job: Job) -> str:
    if job.state == Job.State.COMPLETED:
        return WebhookDelivery.Event.COMPLETED
    return WebhookDelivery.Event.FAILED


def webhook_body(*, request: QueryRequest, job: Job, at: datetime) -> str:
    """The event body: the same bytes on every try, so every signature covers what the receiver reads."""
    payload: dict[str, Any] = {
        "type": webhook_event(job=job),
        "timestamp": _iso(at),
        "data": {
            "requestId": str(request.id),
            "jobId": str(job.id),
            "state": job.state,
            "result": job.result_payload(),
            "error": job.error_payload(),
            "metadata": request.metadata,
        },
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def webhook_delivery_create(*, request: QueryRequest, job: Job | None = None) -> WebhookDelivery | None:
    """Create the request's delivery and queue its first try; None if it has one already (or no URL)."""
    if not request.webhook_url:
        return None
    job = job or Job.objects.get(id=request.job_id)
    if not job.is_finished:
        raise ValueError(f"job {job.id} has not finished; its outcome is not known yet")
    now = timezone.now()
    at = request.created_at if request.outcome == QueryRequest.Outcome.CACHED else (job.finished_at or now)
    try:
        with transaction.atomic():
            delivery = WebhookDelivery.objects.create(
                request=request,
                url=request.webhook_url,
                event=webhook_event(job=job),
                body=webhook_body(request=request, job=job, at=at),
                max_attempts=len(settings.WEBHOOK_RETRY_SCHEDULE),
                next_attempt_at=now + timedelta(seconds=settings.WEBHOOK_RETRY_SCHEDULE[0]),
            )
    except IntegrityError:
        return None
    webhook_delivery_enqueue(delivery=delivery)
    return delivery


# --- queueing ----------------------------------------------------------------------------------------


def _rq_job_id(delivery: WebhookDelivery) -> str:
    # One id per try: the sweeper can tell whether this try already sits in the queue.
    return f"webhook-{delivery.id}-{delivery.attempts + 1}"


def webhook_delivery_enqueue(*, delivery: WebhookDelivery) -> bool:
    """Queue the delivery's next try for its ``next_attempt_at``. False if Redis refused it.

    A refusal loses nothing: the row is still pending and due, and the sweeper queues it later.
    Retries use rq's scheduler (``enqueue_at``), which rqworker-pool runs; the sweeper covers
    workers without one.
    """
    queue = django_rq.get_queue(WEBHOOK_QUEUE)
    options = {
        "job_id": _rq_job_id(delivery),
        "job_timeout": int(settings.WEBHOOK_TIMEOUT) + 30,
        "result_ttl": 3600,
        "failure_ttl": 7 * 24 * 3600,
        "description": f"deliver webhook {delivery.id}",
    }
    try:
        if delivery.next_attempt_at is not None and delivery.next_attempt_at > timezone.now():
            # rq's scheduler keeps whole seconds and releases a job once that second starts: rounded
            # down, the try would arrive before it is due and find nothing to do.
            at = delivery.next_attempt_at.replace(microsecond=0) + timedelta(seconds=1)
            queue.enqueue_at(at, TASK, str(delivery.id), **options)
        else:
            # django-rq defers this to the end of a surrounding transaction (COMMIT_MODE on_db_commit),
            # so the worker finds the committed row.
            queue.enqueue(TASK, str(delivery.id), **options)
    except RedisError:
        logger.warning("could not queue webhook delivery %s; the sweeper will", delivery.id, exc_info=True)
        return False
    return True


# --- sending -----------------------------------------------------------------------------------------


def webhook_signing_keys(*, api_key: ApiKey | None) -> list[bytes]:
    """The HMAC keys to sign with: the key's active secrets (two while rotating), else WEBHOOK_SECRET."""
    if api_key is not None:
        now = timezone.now()
        secrets = WebhookSecret.objects.filter(api_key=api_key).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )
        keys = [signing.secret_key_bytes(s.secret) for s in secrets.order_by("-created_at")]
        if keys:
            return keys
    if settings.WEBHOOK_SECRET:
        return [signing.secret_key_bytes(settings.WEBHOOK_SECRET)]
    return []


def retry_delay(*, attempts: int, retry_after: str | None = None) -> float:
    """Seconds before the try after ``attempts`` tries: the schedule's, or longer if Retry-After says so."""
    schedule = settings.WEBHOOK_RETRY_SCHEDULE
    delay = float(schedule[min(attempts, len(schedule) - 1)])
    asked = parse_retry_after(retry_after)
    if asked is not None:
        delay = max(delay, min(asked, RETRY_AFTER_MAX))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - timezone.now()).total_seconds())


def _claim(delivery_id: uuid.UUID | str) -> WebhookDelivery | None:
    """Take the delivery's due try, or None if it is not due, not pending, or another worker has it."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.WEBHOOK_TIMEOUT + CLAIM_MARGIN)
    claimed = WebhookDelivery.objects.filter(
        id=delivery_id,
        state=WebhookDelivery.State.PENDING,
        next_attempt_at__lte=now,
        attempts__lt=F("max_attempts"),
    ).update(attempts=F("attempts") + 1, next_attempt_at=lease)
    if claimed != 1:
        return None
    return WebhookDelivery.objects.select_related("request").get(id=delivery_id)


def webhook_delivery_attempt(*, delivery_id: uuid.UUID | str) -> WebhookAttempt | None:
    """Make the delivery's due try: record it, send it, record the outcome, schedule what follows.

    Returns the attempt, or None when there was nothing to do (not due, finished, or taken).
    """
    delivery = _claim(delivery_id)
    if delivery is None:
        return None
    # A try left unfinished was cut short by a dying worker: close its row so the record reads right.
    WebhookAttempt.objects.filter(delivery=delivery, finished_at__isnull=True).update(
        finished_at=timezone.now(), error="abandoned: the worker stopped during the attempt"
    )
    timestamp = int(time.time())
    body = delivery.body.encode()
    headers = {
        "webhook-id": delivery.webhook_id,
        "webhook-timestamp": str(timestamp),
    }
    keys = webhook_signing_keys(api_key=delivery.request.api_key)
    if keys:
        headers["webhook-signature"] = signing.signature_header(
            keys=keys, msg_id=delivery.webhook_id, timestamp=timestamp, body=body
        )
    attempt = WebhookAttempt.objects.create(
        delivery=delivery,
        number=delivery.attempts,
        url=delivery.url,
        webhook_timestamp=timestamp,
        started_at=timezone.now(),
    )

    result = outbound.post(
        url=delivery.url,
        body=body,
        headers=headers,
        timeout=settings.WEBHOOK_TIMEOUT,
        allow_private=settings.WEBHOOK_ALLOW_PRIVATE,
    )

    attempt.finished_at = timezone.now()
    attempt.address = result.address
    attempt.status_code = result.status
    attempt.duration_ms = result.duration_ms
    attempt.error = _attempt_error(result)
    attempt.response_excerpt = result.body.decode("utf-8", "replace")[:RESPONSE_EXCERPT_CHARS]
    attempt.save(
        update_fields=["finished_at", "address", "status_code", "duration_ms", "error", "response_excerpt"]
    )
    _settle(delivery=delivery, result=result, error=attempt.error)
    return attempt


def _attempt_error(result: outbound.HttpResult) -> str:
    status = result.status
    if status is None:
        return result.error
    if 300 <= status < 400:
        return f"redirect to {result.location or '(no Location)'} not followed"
    if not 200 <= status < 300:
        return f"HTTP {status}"
    return result.error


def _settle(*, delivery: WebhookDelivery, result: outbound.HttpResult, error: str) -> None:
    now = timezone.now()
    delivery.last_status_code = result.status
    delivery.last_error = error if not (result.status and 200 <= result.status < 300) else ""
    fields = ["state", "next_attempt_at", "finished_at", "last_status_code", "last_error"]
    status = result.status
    if status is not None and 200 <= status < 300:
        outcome = WebhookDelivery.State.SUCCEEDED
    elif status == 410:
        outcome = WebhookDelivery.State.DISABLED
    elif result.refused or delivery.attempts >= delivery.max_attempts:
        outcome = WebhookDelivery.State.FAILED
    else:
        outcome = None

    if outcome is not None:
        delivery.state = outcome
        delivery.next_attempt_at = None
        delivery.finished_at = now
        delivery.save(update_fields=fields)
        metrics.webhook_delivery_counted(outcome=outcome)
        logger.info("webhook delivery %s %s after %d attempt(s)", delivery.id, outcome, delivery.attempts)
        return

    retry_after = result.retry_after if status in (429, 503) else None
    delay = retry_delay(attempts=delivery.attempts, retry_after=retry_after)
    delivery.next_attempt_at = now + timedelta(seconds=delay)
    delivery.save(update_fields=fields)
    metrics.webhook_delivery_counted(outcome="retrying")
    logger.info(
        "webhook delivery %s attempt %d failed (%s); next in %ss",
        delivery.id,
        delivery.attempts,
        error,
        delay,
    )
    webhook_delivery_enqueue(delivery=delivery)


# --- operators ---------------------------------------------------------------------------------------


def webhook_delivery_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery once more, now, with its original body and webhook-id (receivers deduplicate).

    A finished delivery gets one more try; a pending one is made due now, unless a try is in flight.
    """
    now = timezone.now()
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().get(id=delivery.id)
        in_flight = delivery.attempt_rows.filter(finished_at__isnull=True).exists()
        if delivery.state != WebhookDelivery.State.PENDING:
            delivery.state = WebhookDelivery.State.PENDING
            delivery.finished_at = None
            delivery.max_attempts = delivery.attempts + 1
        elif delivery.attempts >= delivery.max_attempts:
            delivery.max_attempts = delivery.attempts + 1
        if not in_flight:
            delivery.next_attempt_at = now
        delivery.save(update_fields=["state", "finished_at", "max_attempts", "next_attempt_at"])
    if not in_flight:
        webhook_delivery_enqueue(delivery=delivery)
    return delivery


def webhook_deliveries_sweep(*, limit: int = SWEEP_BATCH) -> int:
    """Queue every pending delivery that is due, and create deliveries a crash kept from existing.

    Safe to run anywhere and often: a try is claimed with a conditional update, so a delivery queued
    twice is sent once. Returns how many deliveries were queued, created or closed.
    """
    now = timezone.now()
    done = 0

    # Requests whose outcome is known but whose delivery was never created (a worker died between
    # finishing the job and recording it).
    missing = (
        QueryRequest.objects.filter(
            created_at__gte=now - MISSING_DELIVERY_WINDOW,
            job__state__in=Job.FINISHED_STATES,
            webhook_delivery__isnull=True,
        )
        .exclude(webhook_url="")
        .select_related("job")[:limit]
    )
    for request in missing:
        if webhook_delivery_create(request=request, job=request.job) is not None:
            done += 1

    # A due delivery whose tries are used up lost its last one to a dying worker.
    exhausted = WebhookDelivery.objects.filter(
        state=WebhookDelivery.State.PENDING, next_attempt_at__lte=now, attempts__gte=F("max_attempts")
    )
    for delivery in exhausted[:limit]:
        closed = WebhookDelivery.objects.filter(id=delivery.id, state=WebhookDelivery.State.PENDING).update(
            state=WebhookDelivery.State.FAILED,
            next_attempt_at=None,
            finished_at=now,
            last_error="the last attempt was cut short by a worker that stopped",
        )
        if closed:
            metrics.webhook_delivery_counted(outcome=WebhookDelivery.State.FAILED)
            done += 1

    due = WebhookDelivery.objects.filter(
        state=WebhookDelivery.State.PENDING, next_attempt_at__lte=now, attempts__lt=F("max_attempts")
    ).order_by("next_attempt_at")
    queue = django_rq.get_queue(WEBHOOK_QUEUE)
    for delivery in due[:limit]:
        try:
            queued = queue.fetch_job(_rq_job_id(delivery))
            if queued is not None and queued.get_status(refresh=False) == JobStatus.QUEUED:
                continue
        except RedisError:
            logger.warning("Redis is unavailable; webhook deliveries wait for the next sweep")
            break
        if webhook_delivery_enqueue(delivery=delivery):
            done += 1
    return done


def webhook_secret_create(
    *, api_key: ApiKey, grace: timedelta | None = SECRET_ROTATION_GRACE
) -> tuple[WebhookSecret, str]:
    """Give ``api_key`` a new signing secret; returns the row and the secret, to be shown once.

    Secrets the key already had keep signing for ``grace`` (both signatures go out meanwhile), so a
    receiver can switch to the new one without rejecting a delivery; ``grace=None`` ends them now.
    """
    now = timezone.now()
    secret = signing.secret_generate()
    with transaction.atomic():
        current = WebhookSecret.objects.select_for_update().filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now), api_key=api_key
        )
        ends = now + grace if grace is not None else now
        current.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=ends)).update(expires_at=ends)
        row = WebhookSecret.objects.create(api_key=api_key, secret=secret, prefix=secret[:12])
    return row, secret


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


SWEEP_LOCK_KEY = "webhooks:sweep"


def webhook_sweep_if_due() -> int | None:
    """Sweep unless another worker did within WEBHOOK_SWEEP_INTERVAL; None when it was not this one's turn."""
    try:
        mine = redis_client().set(SWEEP_LOCK_KEY, "1", nx=True, ex=settings.WEBHOOK_SWEEP_INTERVAL)
    except RedisError:
        logger.warning("Redis is unavailable; skipping the webhook sweep")
        return None
    if not mine:
        return None
    return webhook_deliveries_sweep()
