"""The upstream circuit breaker: after repeated upstream failures, stop sending work upstream.

Every failed upstream request that a CLI reports (claude_cli.upstream: each retry, and a final
``api_error_status``) counts against its kind: ``auth``, ``rate_limit``, ``overloaded`` or
``network``. After ``BREAKER_THRESHOLD`` in a row of one kind (any success resets every count) the
breaker opens for that kind, for ``BREAKER_COOLDOWN`` seconds, or until the reset the upstream
reported for a rate limit when that is later. While it is open:

- new jobs are refused on every API (503 ``overloaded_error``, 429 ``rate_limit_error`` for a rate
  limit, with ``Retry-After``) before a row is written; cache hits and joins are still served;
- workers take no job from the queues (queries.worker): queued jobs wait, they are not failed;
- a running CLI that reports another failure of an open kind is stopped, and its job queued again.

Once the cooldown has passed the breaker is half-open: submissions are accepted again and one worker
at a time (the one holding ``breaker:probe``) takes a job. An answer closes the breaker; another
failure opens it for a new cooldown. The state lives in Redis, so every host shares it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from prometheus_client.core import GaugeMetricFamily
from redis import Redis
from redis.exceptions import RedisError

from claude_cli.upstream import UPSTREAM_KINDS, UpstreamFailure
from core import metrics
from core.errors import GatewayError, Overloaded
from core.redis import redis_client

logger = logging.getLogger(__name__)

FAILURES_KEY = "breaker:failures:{}"
OPEN_KEY = "breaker:open:{}"
PROBE_KEY = "breaker:probe"
# An open kind's record outlives its cooldown by this much: half-open until a probe settles it.
_HALF_OPEN_TTL = 3600
# A count of failures in a row is forgotten after this long without another.
_FAILURES_TTL = 3600


@dataclass(frozen=True)
class KindState:
    """One kind the breaker is not closed for: ``open`` until ``until`` (epoch s), then ``half_open``."""

    kind: str
    until: float
    opened_at: float
    status: int | None
    message: str
    failures: int

    def state(self, now: float) -> str:
        return "open" if now < self.until else "half_open"

    def retry_after(self, now: float) -> int:
        return max(1, math.ceil(self.until - now))

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "state": self.state(now),
            "until": _iso(self.until),
            "retryAfter": self.retry_after(now) if now < self.until else 0,
            "openedAt": _iso(self.opened_at),
            "status": self.status,
            "message": self.message,
            "failures": self.failures,
        }


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _parse(kind: str, raw: bytes | str | None) -> KindState | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return KindState(
            kind=kind,
            until=float(data["until"]),
            opened_at=float(data["openedAt"]),
            status=data.get("status"),
            message=str(data.get("message") or ""),
            failures=int(data.get("failures") or 0),
        )
    except (ValueError, KeyError, TypeError):
        return None


def breaker_kinds(*, redis: Redis | None = None) -> dict[str, KindState]:
    """The kinds the breaker is open or half-open for (one MGET); empty when it is closed."""
    redis = redis or redis_client()
    raw = redis.mget([OPEN_KEY.format(kind) for kind in UPSTREAM_KINDS])
    found = {kind: _parse(kind, value) for kind, value in zip(UPSTREAM_KINDS, raw, strict=True)}
    return {kind: state for kind, state in found.items() if state is not None}


def breaker_status() -> dict[str, Any]:
    """The breaker as /ready, the dashboard and check_claude show it."""
    now = time.time()
    kinds = breaker_kinds()
    states = {state.state(now) for state in kinds.values()}
    overall = "open" if "open" in states else "half_open" if states else "closed"
    return {
        "state": overall,
        "threshold": settings.BREAKER_THRESHOLD,
        "cooldownSeconds": settings.BREAKER_COOLDOWN,
        "kinds": {kind: state.as_dict(now) for kind, state in kinds.items()},
    }


def breaker_failure(failure: UpstreamFailure) -> bool:
    """Count one failed upstream request; open the breaker for its kind at the threshold, or at
    once when it was half-open (a failed probe). True when the kind is open now."""
    if not settings.BREAKER_ENABLED:
        return False
    key = OPEN_KEY.format(failure.kind)
    try:
        redis = redis_client()
        pipe = redis.pipeline(transaction=False)
        pipe.incr(FAILURES_KEY.format(failure.kind))
        pipe.expire(FAILURES_KEY.format(failure.kind), _FAILURES_TTL)
        pipe.get(key)
        count, _, raw = pipe.execute()
        now = time.time()
        current = _parse(failure.kind, raw)
        if current is not None and current.state(now) == "open":
            return True
        if current is None and count < settings.BREAKER_THRESHOLD:
            return False
        until = now + settings.BREAKER_COOLDOWN
        if failure.kind == "rate_limit":
            # Not before the upstream said its limit resets, or before the CLI would have retried.
            until = max(until, failure.reset_at or 0.0, now + (failure.retry_in or 0.0))
        record = {
            "until": until,
            "openedAt": now,
            "status": failure.status,
            "message": failure.describe(),
            "failures": int(count),
        }
        redis.set(key, json.dumps(record), ex=math.ceil(until - now) + _HALF_OPEN_TTL)
        logger.warning(
            "upstream circuit breaker open for %s until %s after %d failures: %s",
            failure.kind,
            _iso(until),
            count,
            failure.describe(),
        )
        return True
    except RedisError:
        logger.warning("could not record an upstream failure in the breaker", exc_info=True)
        return False


def breaker_success() -> None:
    """The upstream answered: every count is reset and the breaker closes (one round trip)."""
    if not settings.BREAKER_ENABLED:
        return
    keys = [PROBE_KEY]
    for kind in UPSTREAM_KINDS:
        keys += [FAILURES_KEY.format(kind), OPEN_KEY.format(kind)]
    try:
        if redis_client().delete(*keys):
            logger.info("upstream answered: circuit breaker closed")
    except RedisError:
        logger.warning("could not reset the upstream breaker", exc_info=True)


class UpstreamRateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"


def breaker_refusal(*, redis: Redis | None = None) -> GatewayError | None:
    """The error a new job gets while the breaker is open for some kind; None when it may be queued.

    A rate limit is a 429, every other kind a 503; ``Retry-After`` says when the cooldown ends.
    """
    if not settings.BREAKER_ENABLED:
        return None
    now = time.time()
    try:
        kinds = breaker_kinds(redis=redis)
    except RedisError:
        return None  # the submit's own Redis calls report an outage
    open_kinds = [state for state in kinds.values() if state.state(now) == "open"]
    if not open_kinds:
        return None
    state = max(open_kinds, key=lambda s: s.until)
    retry_after = state.retry_after(now)
    details = {"reason": f"upstream_{state.kind}", "retryAfter": retry_after, "upstream": state.message}
    headers = {"Retry-After": str(retry_after)}
    message = f"The upstream is failing ({state.message}); new queries are refused for {retry_after} s."
    if state.kind == "rate_limit":
        return UpstreamRateLimited(message, details=details, headers=headers)
    return Overloaded(message, details=details, headers=headers)


def breaker_open() -> bool:
    """Whether the breaker is open (not half-open) for some kind. Redis trouble says no."""
    if not settings.BREAKER_ENABLED:
        return False
    try:
        now = time.time()
        return any(state.state(now) == "open" for state in breaker_kinds().values())
    except RedisError:
        return False


def breaker_worker_admit(*, holder: str) -> bool:
    """Whether a worker may take a job now: when closed, yes; while open, no; when half-open, if it
    holds the probe (taken here, one holder at a time). Redis trouble admits: the queue reports it."""
    if not settings.BREAKER_ENABLED:
        return True
    try:
        redis = redis_client()
        kinds = breaker_kinds(redis=redis)
        if not kinds:
            return True
        now = time.time()
        if any(state.state(now) == "open" for state in kinds.values()):
            return False
        ttl = int(settings.RQ_JOB_TIMEOUT)
        if redis.set(PROBE_KEY, holder, nx=True, ex=ttl):
            logger.info("upstream circuit breaker half-open: %s runs the probe job", holder)
            return True
        if redis.get(PROBE_KEY) == holder.encode():
            redis.expire(PROBE_KEY, ttl)
            return True
        return False
    except RedisError:
        return True


def breaker_probe_release(*, holder: str) -> None:
    """A worker that held the probe is done with its job: another may probe (if still half-open)."""
    if not settings.BREAKER_ENABLED:
        return
    try:
        redis = redis_client()
        if redis.get(PROBE_KEY) == holder.encode():
            redis.delete(PROBE_KEY)
    except RedisError:
        pass


# /metrics: claude_upstream_breaker_open{kind} (1 open, 0.5 half-open, 0 closed), read at scrape.


def _scrape_read(pipe: Any) -> int:
    pipe.mget([OPEN_KEY.format(kind) for kind in UPSTREAM_KINDS])
    return 1


def _scrape_gauges(replies: list[Any], now: float) -> Iterable[GaugeMetricFamily]:
    raw = replies[0] if replies else [None] * len(UPSTREAM_KINDS)
    gauge = GaugeMetricFamily(
        "claude_upstream_breaker_open",
        "Upstream circuit breaker per kind of failure: 1 open, 0.5 half-open, 0 closed.",
        labels=["kind"],
    )
    for kind, value in zip(UPSTREAM_KINDS, raw, strict=True):
        state = _parse(kind, value)
        level = 0.0 if state is None else 1.0 if state.state(now) == "open" else 0.5
        gauge.add_metric([kind], level)
    yield gauge


BREAKER_SCRAPE = metrics.ScrapeSource(read=_scrape_read, gauges=_scrape_gauges)
