"""A job's live output: one Redis stream per job, read from the start by every caller joined to it.

``job:{job_id}:events`` holds one entry per event, its one field ``e`` the event as JSON: progress,
text deltas, tool activity, then exactly one final event (the Result or the error), last. It is
capped (``XADD MAXLEN ~ EVENTS_MAXLEN``) and expires ``EVENTS_TTL`` seconds after its last entry.
The stream is a live view, not the record: the job's row in PostgreSQL keeps the outcome, and a
reader that finds no stream (expired, or Redis flushed) gets the final event from the row.

Events (the ``type`` decides the rest):

- ``{"type": "progress", "state": "queued"|"running", "progress": int}``
- ``{"type": "text", "text": str}`` the answer's text as it arrives
- ``{"type": "tool", "name": "mcp__x__y", "phase": "start"|"end"}``
- final: ``{"type": "result", "result": Result}`` or
  ``{"type": "error", "error": {"type": Job.ErrorType, "message": str, "status": int|None}}``
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from core.redis import redis_client, redis_text
from queries.models import Job

logger = logging.getLogger(__name__)

EVENTS_KEY = "job:{}:events"
FIELD = "e"
FINAL_TYPES = frozenset(("result", "error"))
START = "0-0"
# The sync client's socket timeout is 5 s (settings.CACHES): a blocking read must end before it.
_SYNC_BLOCK_MAX_MS = 4000
# A reader that has seen nothing for this many pings looks at the row once: a final event whose
# XADD failed (Redis was briefly away) must not leave it waiting for ever.
_ROW_CHECK_EVERY_PINGS = 4

Event = dict[str, Any]
Entry = tuple[str, Event]


def events_key(job_id: uuid.UUID | str) -> str:
    return EVENTS_KEY.format(job_id)


def events_append(job_id: uuid.UUID | str, event: Event) -> str | None:
    """Append an event to the job's stream (and renew its TTL); its entry id, or None if Redis failed.

    Never raises on a Redis failure: the stream is a view, and the job's outcome is in its row.
    """
    key = events_key(job_id)
    try:
        pipe = redis_client().pipeline(transaction=False)
        pipe.xadd(
            key,
            {FIELD: json.dumps(event, separators=(",", ":"), ensure_ascii=False)},
            maxlen=settings.EVENTS_MAXLEN,
            approximate=True,
        )
        pipe.expire(key, settings.EVENTS_TTL)
        entry_id, _ = pipe.execute()
    except RedisError:
        logger.warning("could not append a %s event to %s", event.get("type"), key, exc_info=True)
        return None
    return redis_text(entry_id)


def events_read(
    job_id: uuid.UUID | str, *, after: str = START, block_ms: int = 0, count: int = 200
) -> list[Entry]:
    """Entries after ``after`` (oldest first), waiting up to ``block_ms`` for one (0: no wait)."""
    block = min(block_ms, _SYNC_BLOCK_MAX_MS) or None
    reply = redis_client().xread({events_key(job_id): after}, count=count, block=block)
    return _entries(reply)


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def async_redis() -> aioredis.Redis:
    """A redis.asyncio client for the running event loop (a client belongs to the loop it runs on).

    Each blocked read holds one connection of its pool, so the pool holds up to EVENTS_MAX_READERS
    (redis-py's default is 100); Redis serves 10000 clients by default (``maxclients``).
    """
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=2,
            # A read blocks as long as its XREAD BLOCK asks; TCP keepalive notices a dead server.
            socket_timeout=None,
            socket_keepalive=True,
            health_check_interval=30,
            max_connections=settings.EVENTS_MAX_READERS,
            # A pooled connection the server closed (Redis restarted) fails once: the command is
            # sent again at once on a new one, instead of the reader taking it for an outage.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
    return client


async def aevents_read(
    job_id: uuid.UUID | str, *, after: str = START, block_ms: int = 0, count: int = 200
) -> list[Entry]:
    """:func:`events_read` over redis.asyncio: waits without holding a thread."""
    reply = await async_redis().xread({events_key(job_id): after}, count=count, block=block_ms or None)
    return _entries(reply)


def _entries(reply: Any) -> list[Entry]:
    entries: list[Entry] = []
    for _key, items in reply or []:
        for entry_id, fields in items:
            raw = fields.get(FIELD.encode()) if FIELD.encode() in fields else fields.get(FIELD)
            try:
                event = json.loads(raw)
            except (TypeError, ValueError):
                logger.error("unreadable event %s; skipped", redis_text(entry_id))
                continue
            if isinstance(event, dict):
                entries.append((str(redis_text(entry_id)), event))
    return entries


def is_final(event: Event) -> bool:
    return event.get("type") in FINAL_TYPES


def job_final_event(job: Job) -> Event | None:
    """The final event of a finished job, from its row (None while it is queued or running)."""
    if not job.is_finished:
        return None
    if job.state == Job.State.COMPLETED:
        return {"type": "result", "result": job.build_result()}
    status = (job.cli_output or {}).get("api_error_status") if isinstance(job.cli_output, dict) else None
    return {
        "type": "error",
        "error": {
            "type": job.error_type or Job.ErrorType.INTERNAL_ERROR,
            "message": job.error_message,
            "status": status if isinstance(status, int) and not isinstance(status, bool) else None,
        },
    }


def events_final_append(job: Job) -> None:
    """Append a finished job's final event: the last entry of its stream."""
    event = job_final_event(job)
    if event is not None:
        events_append(job.id, event)


def replay(result: dict[str, Any]) -> list[Event]:
    """The event sequence of a cached Result: what a cache hit streams."""
    events: list[Event] = [{"type": "progress", "state": "running", "progress": 80}]
    if result.get("response"):
        events.append({"type": "text", "text": result["response"]})
    events.append({"type": "result", "result": result})
    return events


def _row_final(job_id: str) -> tuple[str, Event] | None:
    # Runs in an executor thread, outside any request: its connection is closed after the look, or
    # it would stay open as long as the thread lives.
    try:
        job = Job.objects.filter(id=job_id).first()
    finally:
        connection.close()
    if job is None or not job.is_finished:
        return None
    event = job_final_event(job)
    assert event is not None
    finished = job.finished_at.timestamp() if job.finished_at else time.time()
    # A valid stream id, so that a reconnect naming it reads the (empty) stream and gets it again.
    return f"{int(finished * 1000)}-0", event


async def job_events(
    job_id: uuid.UUID | str, *, after: str = START, ping_every: float
) -> AsyncIterator[Entry | None]:
    """The job's entries after ``after`` in order until its final event (inclusive), and None each
    ``ping_every`` seconds with nothing new (the caller sends a keep-alive).

    With no stream (expired, never written, Redis flushed) or Redis unreachable, the final event
    comes from the job's row once the job has finished.
    """
    job = str(job_id)
    last = after or START
    block_ms = max(int(ping_every * 1000), 1)
    idle = 0
    row_final = sync_to_async(_row_final, thread_sensitive=False)
    wait = 0  # the first look does not block: a finished job with no stream answers at once
    while True:
        try:
            entries = await aevents_read(job, after=last, block_ms=wait)
            missing = not entries and not await async_redis().exists(events_key(job))
        except RedisError:
            logger.warning("cannot read the events of job %s; falling back to its row", job, exc_info=True)
            entries, missing = [], True
            # At the ping's pace: hundreds of streams must not turn a Redis hiccup into a storm of
            # database reads.
            await asyncio.sleep(ping_every)
        for entry_id, event in entries:
            last = entry_id
            yield entry_id, event
            if is_final(event):
                return
        if entries:
            idle = 0
            continue
        if missing or (wait and (idle + 1) % _ROW_CHECK_EVERY_PINGS == 0):
            final = await row_final(job)
            if final is not None:
                yield final
                return
        if wait:
            idle += 1
            yield None
        wait = block_ms
