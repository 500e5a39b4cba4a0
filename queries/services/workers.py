"""Which queue workers are alive: registered in Redis *and* heard from lately.

rq keeps a worker's registration until its key expires (the worker's TTL, minutes), so a worker that
was killed without deregistering would be counted for minutes. A worker counts as alive only when its
last heartbeat is at most WORKER_STALE_AFTER seconds old and, on this host, its process exists. The
gateway's workers heartbeat every WORKER_HEARTBEAT_INTERVAL seconds, idle or busy (queries/worker.py).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from redis import Redis
from rq import Worker

from claude_cli.process import process_alive
from core.redis import redis_client, redis_text

# The rq job a gateway worker is running, kept in its registration: rq's own record of it (the
# worker's executions) is gone after a Redis flush, and the worker writes this one back.
CURRENT_JOB_FIELD = "gateway_current_job"


@dataclass(frozen=True)
class LiveWorker:
    name: str
    hostname: str
    pid: int | None
    state: str
    current_job: str | None
    heartbeat_age: float


def workers_alive(*, redis: Redis, now: datetime | None = None) -> list[LiveWorker]:
    """The registered workers whose heartbeat is recent and, on this host, whose process exists."""
    workers = Worker.all(connection=redis)
    if not workers:
        return []
    pipe = redis.pipeline(transaction=False)
    for worker in workers:
        pipe.hget(worker.key, CURRENT_JOB_FIELD)
    current = pipe.execute()
    now = now or datetime.now(UTC)
    host = socket.gethostname()
    alive = []
    for worker, job in zip(workers, current, strict=True):
        if worker.last_heartbeat is None:
            continue
        age = (now - worker.last_heartbeat.replace(tzinfo=UTC)).total_seconds()
        if age > settings.WORKER_STALE_AFTER:
            continue
        if worker.hostname == host and worker.pid and not process_alive(worker.pid):
            continue
        alive.append(
            LiveWorker(
                name=worker.name,
                hostname=worker.hostname or "",
                pid=worker.pid,
                state=worker.get_state(),
                current_job=redis_text(job) or None,
                heartbeat_age=age,
            )
        )
    return alive


def workers_readiness() -> dict[str, Any]:
    """/ready's ``workers`` component: raises when no worker is alive."""
    workers = workers_alive(redis=redis_client())
    if not workers:
        raise RuntimeError("no live queue worker")
    busy = sum(1 for worker in workers if worker.state == "busy")
    return {"workers": len(workers), "busy": busy}
