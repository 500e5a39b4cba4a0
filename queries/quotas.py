"""Per-key quotas: request rate, jobs in flight and monthly spend.

Rate and concurrency are decided inside Redis by Lua scripts, so concurrent web processes never both
take the last slot (DRF's cache-based throttles read, then write, and let bursts through). Refusals
are 429 ``rate_limit_error`` with ``Retry-After`` and ``details.reason``: ``rate_limit``,
``concurrency_limit`` or ``budget_exceeded``.

- **Rate** (``ApiKey.rate_limit_per_minute``): a sliding-window log. Each accepted submission adds
  its timestamp (Redis server time) to ``quota:rate:{key id}``; a submission is accepted while fewer
  than the limit lie in the last 60 seconds. Exact at any instant, no burst at window edges; memory
  is one entry per accepted submission of the last minute. Refused submissions do not count.
- **Concurrency** (``ApiKey.max_concurrent_jobs``): jobs created by the key's submissions that are
  queued or running. Joining an identical in-flight job and cache hits do not count: they start no
  CLI run and spend nothing. ``quota:jobs:{key id}`` is a sorted set of job ids; a slot is taken
  before the Job row is created and given back by ``job_finished``. Redis is not the record: when the
  set's marker ``quota:jobs:{key id}:synced`` is missing (flushed, expired) the set is rebuilt from
  the database, and when the set is full its members are checked against the database so a lost
  release (a killed worker, a Redis blip) frees its slot.
- **Budget** (``ApiKey.monthly_budget_usd``): the sum of ``total_cost_usd`` the CLI reported for jobs
  the key's submissions created this calendar month (UTC). At or over budget, new jobs are refused;
  cache hits and joins are still served. A queued job whose creator went over budget while it waited
  fails as ``budget_exceeded`` when a worker picks it up, so overspend is bounded by the jobs running
  at that moment.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from django.db.models import Sum
from django.utils import timezone
from redis import Redis
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from core.errors import GatewayError, Overloaded
from core.redis import redis_client, redis_text
from queries.models import ApiKey, Job, QueryRequest

logger = logging.getLogger(__name__)

RATE_KEY = "quota:rate:{}"
JOBS_KEY = "quota:jobs:{}"
JOBS_SYNCED_KEY = "quota:jobs:{}:synced"
JOBS_RECONCILED_KEY = "quota:jobs:{}:reconciled"

RATE_WINDOW_MS = 60_000
# The in-flight set lives as long as the key is active; an idle key's set is rebuilt from the database.
JOBS_TTL = 24 * 3600
# A slot whose job id has no row yet belongs to a submission still creating it; only older ones are stale.
MISSING_JOB_GRACE_MS = 60_000
# Checking a full set against the database at most this often per key keeps a refused burst cheap.
RECONCILE_INTERVAL_MS = 1000
CONCURRENCY_RETRY_AFTER = 5

IN_FLIGHT_STATES = (Job.State.QUEUED, Job.State.RUNNING)

# KEYS[1] the key's log; ARGV: limit, window (ms), a unique member. Returns {admitted, retry after ms}.
_RATE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
"""

# KEYS[1] the in-flight set, KEYS[2] its marker; ARGV: limit, job id, ttl (s).
# Returns 1 admitted, 0 full, -1 the set must be rebuilt from the database first.
_ACQUIRE_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
"""

# KEYS[1] the in-flight set, KEYS[2] its marker; ARGV: ttl (s), then the job ids the database has in
# flight. Only the first rebuilder writes: a later one read the database before the first's slots.
_REBUILD_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
redis.call('SET', KEYS[2], '1', 'EX', tonumber(ARGV[1]))
if #ARGV > 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1])) end
return 1
"""


class QuotaExceeded(GatewayError):
    status = 429
    type = "rate_limit_error"


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _redis_now_ms(redis: Redis) -> int:
    seconds, micros = redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


# --- what a key may ask for ------------------------------------------------------------------------


class KeyNotPermitted(GatewayError):
    status = 403
    type = "permission_error"


def api_key_authorize(*, api_key: ApiKey | None, priority: str, model: str | None) -> None:
    """Raise KeyNotPermitted if the key may not ask for this priority or model."""
    if api_key is None:
        return
    if api_key.allowed_priorities and priority not in api_key.allowed_priorities:
        raise KeyNotPermitted(
            f"This key may not submit {priority!r} priority queries.",
            details={"reason": "priority_not_allowed", "allowed": list(api_key.allowed_priorities)},
        )
    if api_key.allowed_models and model not in api_key.allowed_models:
        message = (
            f"This key may not use the model {model!r}."
            if model
            else "This key must name a model (the CLI's default is not among its allowed models)."
        )
        raise KeyNotPermitted(
            message, details={"reason": "model_not_allowed", "allowed": list(api_key.allowed_models)}
        )


# --- rate ------------------------------------------------------------------------------------------


def quota_rate_take(*, api_key: ApiKey, redis: Redis | None = None) -> None:
    """Count one submission against the key's per-minute limit, or raise QuotaExceeded."""
    limit = api_key.rate_limit_per_minute
    if limit is None:
        return
    redis = redis or redis_client()
    try:
        admitted, retry_ms = redis.eval(
            _RATE_SCRIPT, 1, RATE_KEY.format(api_key.pk), limit, RATE_WINDOW_MS, uuid.uuid4().hex
        )
    except RedisError as exc:
        raise Overloaded("The gateway cannot check quotas right now; try again shortly.") from exc
    if not admitted:
        retry = int(retry_ms) / 1000
        raise QuotaExceeded(
            f"Rate limit reached: this key may submit {limit} queries per minute.",
            details={"reason": "rate_limit", "limit": limit, "windowSeconds": RATE_WINDOW_MS // 1000},
            headers=_retry_after(retry),
        )


class SubmissionRateThrottle(BaseThrottle):
    """DRF throttle for POST /api/query: the key's rate limit, decided in Redis (see module doc)."""

    def allow_request(self, request: Request, view: Any) -> bool:
        if isinstance(request.auth, ApiKey):
            quota_rate_take(api_key=request.auth)
        return True


# --- concurrency -----------------------------------------------------------------------------------


def _in_flight_job_ids(*, api_key: ApiKey) -> list[str]:
    """Ids of queued or running jobs that the key's own submissions created (the database's view)."""
    ids = QueryRequest.objects.filter(
        api_key=api_key, outcome=QueryRequest.Outcome.QUEUED, job__state__in=IN_FLIGHT_STATES
    ).values_list("job_id", flat=True)
    return [str(job_id) for job_id in ids]


def quota_jobs_rebuild(*, api_key: ApiKey, redis: Redis) -> bool:
    """Fill the key's in-flight set from the database unless another process just did."""
    ids = _in_flight_job_ids(api_key=api_key)
    keys = (JOBS_KEY.format(api_key.pk), JOBS_SYNCED_KEY.format(api_key.pk))
    return bool(redis.eval(_REBUILD_SCRIPT, 2, *keys, JOBS_TTL, *ids))


def quota_jobs_reconcile(*, api_key: ApiKey, redis: Redis, force: bool = False) -> int:
    """Drop slots whose job finished, or never got a row, according to the database.

    Returns how many were dropped. Runs at most once a second per key unless ``force``.
    """
    if not force and not redis.set(
        JOBS_RECONCILED_KEY.format(api_key.pk), "1", nx=True, px=RECONCILE_INTERVAL_MS
    ):
        return 0
    key = JOBS_KEY.format(api_key.pk)
    members = cast(list[tuple[bytes, float]], redis.zrange(key, 0, -1, withscores=True))
    if not members:
        return 0
    slots = {str(redis_text(member)): score for member, score in members}
    valid: list[uuid.UUID] = []
    for job_id in slots:
        try:
            valid.append(uuid.UUID(job_id))
        except ValueError:
            continue
    states = dict(Job.objects.filter(id__in=valid).values_list("id", "state"))
    now = _redis_now_ms(redis)
    stale = []
    for job_id, acquired_at in slots.items():
        try:
            state = states.get(uuid.UUID(job_id))
        except ValueError:
            stale.append(job_id)
            continue
        if state is None:
            if now - acquired_at > MISSING_JOB_GRACE_MS:
                stale.append(job_id)
        elif state not in IN_FLIGHT_STATES:
            stale.append(job_id)
    if stale:
        redis.zrem(key, *stale)
        logger.info("quota: freed %d stale in-flight slot(s) of API key %s", len(stale), api_key.pk)
    return len(stale)


def quota_jobs_acquire(*, api_key: ApiKey, job_id: uuid.UUID | str, redis: Redis | None = None) -> None:
    """Take one of the key's in-flight job slots for ``job_id``, or raise QuotaExceeded."""
    redis = redis or redis_client()
    limit = api_key.max_concurrent_jobs
    keys = (JOBS_KEY.format(api_key.pk), JOBS_SYNCED_KEY.format(api_key.pk))
    try:
        if limit is None:
            # Not tracked while unlimited: forget the set so that a limit set later starts from the database.
            redis.delete(*keys)
            return
        for attempt in range(3):
            admitted = int(redis.eval(_ACQUIRE_SCRIPT, 2, *keys, limit, str(job_id), JOBS_TTL))
            if admitted == 1:
                return
            if admitted == -1:
                quota_jobs_rebuild(api_key=api_key, redis=redis)
            elif attempt > 0 or not quota_jobs_reconcile(api_key=api_key, redis=redis):
                break
    except RedisError as exc:
        raise Overloaded("The gateway cannot check quotas right now; try again shortly.") from exc
    raise QuotaExceeded(
        f"Concurrency limit reached: this key may have {limit} jobs queued or running at once.",
        details={"reason": "concurrency_limit", "limit": limit},
        headers=_retry_after(CONCURRENCY_RETRY_AFTER),
    )


@dataclass(frozen=True)
class JobCreator:
    """The submission that created a job: its request, its key and the key's monthly budget."""

    request_id: uuid.UUID
    api_key_id: int | None
    monthly_budget_usd: Decimal | None


# Where job_creator keeps its answer on a Job instance: a job's creator never changes.
_CREATOR_ATTR = "_gateway_creator"


def job_creator_lookup(*, job_id: uuid.UUID | str) -> JobCreator | None:
    """The submission that created the job, in one query (None if it is not recorded)."""
    row = (
        QueryRequest.objects.filter(job_id=job_id, outcome=QueryRequest.Outcome.QUEUED)
        .values_list("id", "api_key_id", "api_key__monthly_budget_usd")
        .first()
    )
    return JobCreator(*row) if row is not None else None


def job_creator_remember(*, job: Job, creator: JobCreator | None) -> None:
    """Keep a creator already looked up (by the task, for its log context) on the job instance."""
    job.__dict__[_CREATOR_ATTR] = creator


def job_creator(*, job: Job) -> JobCreator | None:
    """The submission that created the job, looked up once per Job instance."""
    if _CREATOR_ATTR not in job.__dict__:
        job_creator_remember(job=job, creator=job_creator_lookup(job_id=job.id))
    return cast("JobCreator | None", job.__dict__[_CREATOR_ATTR])


def job_creator_key_id(*, job: Job) -> int | None:
    """The API key whose submission created the job (None for anonymous submissions)."""
    creator = job_creator(job=job)
    return creator.api_key_id if creator is not None else None


def quota_jobs_release(*, job: Job, redis: Redis | None = None) -> None:
    """Give back the in-flight slot of a finished job. A failure here is healed by reconciliation."""
    quota_slot_release(api_key_id=job_creator_key_id(job=job), job_id=job.id, redis=redis)


def quota_slot_release(
    *, api_key_id: int | None, job_id: uuid.UUID | str, redis: Redis | None = None
) -> None:
    """Give back the in-flight slot that ``job_id`` holds for a key (a finished or never-made job)."""
    if api_key_id is None:
        return
    try:
        (redis or redis_client()).zrem(JOBS_KEY.format(api_key_id), str(job_id))
    except RedisError:
        logger.warning("quota: could not release the slot of job %s; reconciliation will", job_id)


# --- budget ----------------------------------------------------------------------------------------


def month_start(now: datetime | None = None) -> datetime:
    now = (now or timezone.now()).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(now: datetime | None = None) -> datetime:
    return (month_start(now) + timedelta(days=32)).replace(day=1)


def api_key_month_spend(*, api_key: ApiKey | int, now: datetime | None = None) -> Decimal:
    """USD the CLI reported for jobs the key's submissions created this calendar month (UTC)."""
    total = QueryRequest.objects.filter(
        api_key=api_key, outcome=QueryRequest.Outcome.QUEUED, created_at__gte=month_start(now)
    ).aggregate(total=Sum("job__cost_usd"))["total"]
    return total or Decimal(0)


def quota_budget_check(*, api_key: ApiKey) -> None:
    """Raise QuotaExceeded (reason ``budget_exceeded``) if the key has spent its monthly budget."""
    budget = api_key.monthly_budget_usd
    if budget is None:
        return
    spent = api_key_month_spend(api_key=api_key)
    if spent >= budget:
        now = timezone.now()
        resets = next_month_start(now)
        raise QuotaExceeded(
            f"Monthly budget reached: this key has spent ${spent} of ${budget} this month.",
            details={
                "reason": "budget_exceeded",
                "spentUsd": float(spent),
                "budgetUsd": float(budget),
                "resetsAt": resets.isoformat().replace("+00:00", "Z"),
            },
            headers=_retry_after((resets - now).total_seconds()),
        )


def job_budget_refusal(*, job: Job) -> str | None:
    """Why a queued job may not run because its creator is over budget, or None if it may."""
    creator = job_creator(job=job)
    if creator is None or creator.api_key_id is None:
        return None
    key_id, budget = creator.api_key_id, creator.monthly_budget_usd
    if budget is None:
        return None
    spent = api_key_month_spend(api_key=key_id)
    if spent < budget:
        return None
    return f"The submitting key's monthly budget (${budget}) was reached (${spent} spent) before the job ran."


# --- admission of a new job ------------------------------------------------------------------------


def job_admit(*, api_key: ApiKey | None, job_id: uuid.UUID | str, redis: Redis | None = None) -> None:
    """Decide whether the key may create a new job: its budget first, then a concurrency slot."""
    if api_key is None:
        return
    quota_budget_check(api_key=api_key)
    quota_jobs_acquire(api_key=api_key, job_id=job_id, redis=redis)
