"""The request journal: how a cache hit is answered and recorded in one Redis round trip.

A cache hit is the gateway's cheapest answer, and writing its QueryRequest row in the request costed
more than everything else a hit does (an INSERT and its commit on every request). With
``CACHE_HIT_JOURNAL`` on (the default), one Lua script reads the cache entry and, only if there is
one, appends the request's record to the Redis stream ``journal:requests`` and counts the hit: the
answer, its record and its count are one atomic step. Recorders drain the stream into PostgreSQL in
batches (``journal_flush``): a thread in every queue worker (queries/worker.py), every
WORKER_HEARTBEAT_INTERVAL, so that the web spends no CPU on it; a thread in every web process that
records only while no worker is alive (a web running without workers), about every
JOURNAL_FLUSH_INTERVAL; and ``manage.py reconcile``. A row appears within about that long of its
reply. The recorders' threads run at a lower CPU priority (RECORDER_NICE) than the requests', and
in a thread of their own the workers' drains hold up no job.

What it costs: for that moment the record lives only in Redis. A Redis that loses its data (a restart
without persistence) loses the records not yet written, at most a second's worth of cache hits, and
with them the cache those hits came from. Run Redis with AOF where that matters, or set
``CACHE_HIT_JOURNAL=false`` to write every row in its request as before. Hits with a webhook, joins
and new jobs always write their row in the request: a webhook delivery and a job need it at once.

Delivery to the database is at least once and the insert skips ids it already has, so a recorder
that dies mid-batch loses nothing: its unacknowledged entries are claimed by another recorder after
JOURNAL_CLAIM_IDLE_MS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from prometheus_client.core import GaugeMetricFamily, Metric
from redis import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from core import metrics
from core.redis import redis_client
from core.redis_loop import LoopRedis
from queries.auth import KEYS_VERSION_KEY
from queries.models import ApiKey, Job, QueryRequest
from queries.services.cache import cache_entry_purge
from queries.services.workers import workers_alive

logger = logging.getLogger(__name__)

# Cache hits answered but not yet written to the database.
STREAM_KEY = "journal:requests"
GROUP = "recorders"
BATCH = 500
# An entry a recorder read but did not acknowledge for this long is taken over by another recorder.
JOURNAL_CLAIM_IDLE_MS = 30_000
# The recorder thread's nice value.
RECORDER_NICE = 10
# Consumers of dead processes are removed from the group once idle this long with nothing pending.
CONSUMER_FORGET_IDLE_MS = 3_600_000

# KEYS: the cache entry, the journal stream, the metrics hash, the API keys version. ARGV: the request's
# record (a JSON object, completed here with the entry's jobId), the counter's field ('' when metrics
# are off), the keys version the caller's key is good for ('' when it was read from the database just
# now). Returns the cache entry; false on a miss; 0 when the keys changed since (a key was revoked,
# say): nothing written either way.
_HIT_SCRIPT = """
if ARGV[3] ~= '' and (redis.call('GET', KEYS[4]) or '0') ~= ARGV[3] then return 0 end
local entry = redis.call('GET', KEYS[1])
if not entry then return false end
local ok, decoded = pcall(cjson.decode, entry)
if not ok or type(decoded) ~= 'table' or decoded['result'] == nil then return false end
local job = decoded['jobId']
if type(job) ~= 'string' or not string.match(job, '^%x+%-%x+%-%x+%-%x+%-%x+$') then return false end
redis.call('XADD', KEYS[2], '*', 'r', string.sub(ARGV[1], 1, -2) .. ',"jobId":"' .. job .. '"}')
if ARGV[2] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[2], 1) end
return entry
"""
_HIT_SCRIPT_SHA = hashlib.sha1(_HIT_SCRIPT.encode()).hexdigest()
_scripts: dict[int, Any] = {}


def _hit_script(redis: Redis) -> Any:
    # register_script keeps the SHA: EVALSHA, and EVAL once after a Redis restart forgot the script.
    script = _scripts.get(id(redis))
    if script is None:
        script = _scripts[id(redis)] = redis.register_script(_HIT_SCRIPT)
    return script


@dataclass(frozen=True)
class JournalRecord:
    """What a cache hit's QueryRequest row holds; the job comes from the cache entry."""

    id: uuid.UUID
    api_key_id: int | None
    query: str
    hash: str
    priority: str
    model: str
    metadata: dict[str, Any] | None
    no_cache: bool
    created_at: datetime
    api: str = "native"

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": str(self.id),
                "apiKey": self.api_key_id,
                "query": self.query,
                "hash": self.hash,
                "priority": self.priority,
                "model": self.model,
                "metadata": self.metadata,
                "noCache": self.no_cache,
                "createdAt": self.created_at.isoformat(),
                "api": self.api,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )


class KeysChanged(Exception):
    """The API keys changed since the caller's key was read: look it up again before answering."""


def journal_cache_hit(
    *, cache_key: str, record: JournalRecord, redis: Redis, keys_version: bytes | None = None
) -> bytes | None:
    """The raw cache entry under ``cache_key``, with ``record`` journaled and the hit counted; None on a miss.

    ``keys_version``: the API keys version the caller's key is good for (queries.auth), checked in the
    same step; KeysChanged if it moved on. Raises RedisError: the caller treats that as a miss.
    """
    field = metrics.field_name("claude_cache_hits_total") if settings.METRICS_ENABLED else ""
    entry = _hit_script(redis)(
        keys=[cache_key, STREAM_KEY, metrics.COUNTERS_KEY, KEYS_VERSION_KEY],
        args=[record.to_json(), field, keys_version or b""],
    )
    if entry == 0:
        raise KeysChanged
    return entry


async def journal_cache_hit_on_loop(
    *, cache_key: str, record: JournalRecord, redis: LoopRedis, keys_version: bytes | None = None
) -> bytes | None:
    """journal_cache_hit on the event loop (core.redis_loop): the same script, by EVALSHA, and EVAL
    once when Redis does not know it (a restart)."""
    field = metrics.field_name("claude_cache_hits_total") if settings.METRICS_ENABLED else ""
    args: tuple[str | bytes, ...] = (cache_key, STREAM_KEY, metrics.COUNTERS_KEY, KEYS_VERSION_KEY)
    args += (record.to_json(), field, keys_version or b"")
    try:
        entry = await redis.execute("EVALSHA", _HIT_SCRIPT_SHA, 4, *args)
    except NoScriptError:
        entry = await redis.execute("EVAL", _HIT_SCRIPT, 4, *args)
    if entry == 0:
        raise KeysChanged
    return cast(bytes | None, entry)


# --- recording ---------------------------------------------------------------------------------------


def _consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _group_ensure(redis: Redis) -> None:
    try:
        # From the stream's first entry: records written before any recorder existed are kept.
        redis.xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


# PostgreSQL turns the batch's JSON records into rows itself: no model instance, no per-row SQL. Rows
# whose job is gone are left out (the JOIN), a key that is gone becomes null (the LEFT JOIN), and an
# entry delivered twice (a recorder died before acknowledging) is one row (ON CONFLICT).
_INSERT_SQL = """
INSERT INTO {requests} (id, api_key_id, job_id, query, hash, priority, model, webhook_url, metadata,
                        no_cache, outcome, created_at, api)
SELECT r.id, k.id, r."jobId", r.query, r.hash, r.priority, r.model, '', r.metadata, r."noCache", 'cached',
       r."createdAt", COALESCE(r.api, 'native')
FROM jsonb_to_recordset(%s::jsonb) AS r(id uuid, "apiKey" bigint, "jobId" uuid, query text, hash text,
                                         priority text, model text, metadata jsonb, "noCache" boolean,
                                         "createdAt" timestamptz, api text)
JOIN {jobs} j ON j.id = r."jobId"
LEFT JOIN {keys} k ON k.id = r."apiKey"
ON CONFLICT (id) DO NOTHING
"""


def _records(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The readable records and their JSON text (one bad entry must not hold up the batch)."""
    records, texts = [], []
    for entry_id, fields in entries:
        try:
            text = fields[b"r"]
            record = json.loads(text)
            uuid.UUID(record["id"]), uuid.UUID(record["jobId"])
            datetime.fromisoformat(record["createdAt"])
        except (KeyError, ValueError, TypeError, AttributeError):
            logger.error("unreadable journal entry %s; dropped", entry_id)
            continue
        records.append(record)
        texts.append(text)
    return records, texts


def _rows_insert(records: list[dict[str, Any]], texts: list[bytes]) -> int:
    """Insert what is not there yet: a row whose job is gone is dropped, a vanished key becomes null."""
    if not records:
        return 0
    if connection.vendor == "postgresql":
        sql = _INSERT_SQL.format(
            requests=QueryRequest._meta.db_table, jobs=Job._meta.db_table, keys=ApiKey._meta.db_table
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [(b"[" + b",".join(texts) + b"]").decode()])
            inserted = cursor.rowcount
    else:
        inserted = _rows_insert_orm(records)
    if inserted < len(records):
        _stale_entries_purge(records)
    return inserted


def _rows_insert_orm(records: list[dict[str, Any]]) -> int:
    jobs = set(Job.objects.filter(id__in={r["jobId"] for r in records}).values_list("id", flat=True))
    key_ids = {r["apiKey"] for r in records if r["apiKey"] is not None}
    keys = set(ApiKey.objects.filter(id__in=key_ids).values_list("id", flat=True)) if key_ids else set()
    rows = [
        QueryRequest(
            id=uuid.UUID(r["id"]),
            api_key_id=r["apiKey"] if r["apiKey"] in keys else None,
            job_id=uuid.UUID(r["jobId"]),
            query=r["query"],
            hash=r["hash"],
            priority=r["priority"],
            model=r["model"],
            metadata=r["metadata"],
            no_cache=r["noCache"],
            api=r.get("api") or QueryRequest.Api.NATIVE,
            outcome=QueryRequest.Outcome.CACHED,
            created_at=datetime.fromisoformat(r["createdAt"]),
        )
        for r in records
        if uuid.UUID(r["jobId"]) in jobs
    ]
    QueryRequest.objects.bulk_create(rows, batch_size=BATCH, ignore_conflicts=True)
    return len(rows)


def _stale_entries_purge(records: list[dict[str, Any]]) -> None:
    """Some records were not inserted: drop the cache entries of those whose job is gone."""
    job_ids = {r["jobId"] for r in records}
    present = {str(job_id) for job_id in Job.objects.filter(id__in=job_ids).values_list("id", flat=True)}
    for record in records:
        if record["jobId"] not in present:
            logger.error(
                "request %s answered from job %s, which is gone; not recorded", record["id"], record["jobId"]
            )
            # The job was removed without its cache entry (deleting a Job through Django drops both).
            cache_entry_purge(query_hash=record["hash"], job_id=record["jobId"])


def _read_new(
    redis: Redis, consumer: str, *, count: int, block_ms: int | None
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Entries no recorder has read yet (RESP2's reply: [[stream, entries]])."""
    reply = cast(list[Any], redis.xreadgroup(GROUP, consumer, {STREAM_KEY: ">"}, count=count, block=block_ms))
    return reply[0][1] if reply else []


def journal_flush(*, consumer: str | None = None, block_ms: int | None = None, count: int = BATCH) -> int:
    """Write one batch of journaled requests to the database; the number of entries handled.

    Entries another recorder left unacknowledged for JOURNAL_CLAIM_IDLE_MS come first, then new ones
    (waiting up to ``block_ms`` for some). Entries are acknowledged and deleted only once their rows
    are committed: a failure leaves them to be claimed again. Raises RedisError and DatabaseError.
    """
    redis = redis_client()
    consumer = consumer or _consumer_name()
    try:
        _, entries, *_ = redis.xautoclaim(
            STREAM_KEY, GROUP, consumer, JOURNAL_CLAIM_IDLE_MS, "0-0", count=count
        )
        if not entries:
            entries = _read_new(redis, consumer, count=count, block_ms=block_ms)
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        # A new or flushed Redis: the group starts over, from the stream's first entry.
        _group_ensure(redis)
        entries = _read_new(redis, consumer, count=count, block_ms=None)
    if not entries:
        return 0
    ids = [entry_id for entry_id, _ in entries]
    _rows_insert(*_records(entries))
    pipe = redis.pipeline(transaction=False)
    pipe.xack(STREAM_KEY, GROUP, *ids)
    pipe.xdel(STREAM_KEY, *ids)
    pipe.execute()
    return len(ids)


def journal_drain(*, consumer: str | None = None, stopping: threading.Event | None = None) -> int:
    """Flush until the journal has nothing left to give this consumer, or ``stopping`` is set between
    batches (workers' recorders, reconcile, tests)."""
    total = 0
    while not (stopping and stopping.is_set()) and (handled := journal_flush(consumer=consumer)) > 0:
        total += handled
    return total


def _consumers_forget(redis: Redis) -> None:
    """Remove consumers of processes that are gone: none pending, idle for an hour."""
    for consumer in redis.xinfo_consumers(STREAM_KEY, GROUP):
        if consumer["pending"] == 0 and consumer["idle"] > CONSUMER_FORGET_IDLE_MS:
            redis.xgroup_delconsumer(STREAM_KEY, GROUP, consumer["name"])


# --- the recorder thread --------------------------------------------------------------------------------


class _Recorder(threading.Thread):
    """Drains the journal in this process, at a lower CPU priority than the requests' threads.

    A queue worker's recorder (``worker``) drains it every WORKER_HEARTBEAT_INTERVAL: fewer, larger
    inserts cost the database less than a batch every JOURNAL_FLUSH_INTERVAL from every worker. A web
    process's records only while no worker is alive (services.workers): a batch, then
    JOURNAL_FLUSH_INTERVAL for the next to grow; otherwise it looks again every
    WORKER_HEARTBEAT_INTERVAL. So a web without workers (or whose workers all died) still gets its
    hits written, after at most WORKER_STALE_AFTER, and what a dead worker had read is claimed after
    JOURNAL_CLAIM_IDLE_MS. A failure (Redis or the database away) is logged once, and its end too; it
    retries every second.
    """

    def __init__(self, *, worker: bool) -> None:
        super().__init__(name="journal-recorder", daemon=True)
        self.pid = os.getpid()
        self.worker = worker
        self.stopping = threading.Event()
        self.failing = False

    def run(self) -> None:
        _thread_deprioritise()
        consumer = _consumer_name()
        interval = settings.JOURNAL_FLUSH_INTERVAL
        recheck = float(settings.WORKER_HEARTBEAT_INTERVAL)
        next_cleanup = time.monotonic()
        while not self.stopping.is_set():
            try:
                if self.worker:
                    close_old_connections()
                    # A stop ends the drain between batches: a backlog can be long after an outage.
                    handled = journal_drain(consumer=consumer, stopping=self.stopping)
                elif web_records():
                    close_old_connections()
                    # Blocks up to `interval` when the journal is empty.
                    handled = journal_flush(consumer=consumer, block_ms=max(1, int(interval * 1000)))
                else:
                    self.stopping.wait(recheck)
                    continue
                if time.monotonic() >= next_cleanup:
                    next_cleanup = time.monotonic() + 600
                    _consumers_forget(redis_client())
            except Exception as exc:
                self._failed(exc)
                continue
            if self.failing:
                self.failing = False
                logger.info("journaled requests are written again")
            if self.worker:
                # One drain every so often: fewer, larger inserts cost the database less in all.
                self.stopping.wait(recheck)
            elif 0 < handled < BATCH:
                # Let the next batch grow: one insert per interval, not one per request.
                self.stopping.wait(interval)
        connection.close()

    def _failed(self, exc: Exception) -> None:
        if not self.failing:
            self.failing = True
            if isinstance(exc, RedisError | DatabaseError):
                logger.warning("could not write journaled requests; retrying every second", exc_info=True)
            else:
                logger.exception("the journal recorder failed; retrying every second")
        if isinstance(exc, DatabaseError):
            connection.close()
        self.stopping.wait(1.0)

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.join(timeout)


def _thread_deprioritise() -> None:
    """Lower this thread's CPU priority (Linux's nice applies to one thread): requests come first."""
    if sys.platform != "linux":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RECORDER_NICE)
    except OSError:
        logger.debug("could not lower the journal recorder's priority", exc_info=True)


def web_records() -> bool:
    """Whether a web process's recorder writes the journal now: only while no queue worker is alive.

    Live workers record it in recorders of their own (queries/worker.py), so that a cache hit costs
    the web no database work; the web's recorder is for a deployment running without workers.
    """
    return not workers_alive(redis=redis_client())


_recorder: _Recorder | None = None
_recorder_lock = threading.Lock()


def recorder_start(*, worker: bool = False) -> None:
    """Start this process's recorder thread (once; again in a forked child); ``worker`` for a queue
    worker's, which always records.

    gunicorn's workers start one (gateway_project/gunicorn.conf.py), and so does every queue worker
    (queries/worker.py); a command that answers a hit (gateway_query) leaves its record to them.
    """
    global _recorder
    if not settings.CACHE_HIT_JOURNAL or not settings.JOURNAL_RECORDER:
        return
    with _recorder_lock:
        if _recorder is not None and _recorder.pid == os.getpid() and _recorder.is_alive():
            return
        _recorder = _Recorder(worker=worker)
        _recorder.start()


def recorder_stop() -> None:
    """Stop the recorder after its current batch (a gunicorn worker that exits)."""
    recorder = _recorder
    if recorder is not None and recorder.pid == os.getpid():
        recorder.stop()


# --- the backlog on /metrics ------------------------------------------------------------------------

_GAUGE_HELP = {
    "claude_request_journal_pending": "Cache hits answered and journaled, not yet written to the database.",
    "claude_request_journal_oldest_seconds": "Seconds the oldest journaled cache hit has waited (0 if none).",
}


def _backlog_read(pipe: Any) -> int:
    pipe.xlen(STREAM_KEY)
    pipe.xrange(STREAM_KEY, count=1)
    return 2


def _backlog_gauges(replies: list[Any], now: float) -> list[Metric]:
    length, first = replies
    oldest = 0.0
    if first:
        first_ms = int(first[0][0].split(b"-")[0])
        oldest = max(0.0, now - first_ms / 1000)
    return [
        GaugeMetricFamily(name, help_text, value=value)
        for (name, help_text), value in zip(_GAUGE_HELP.items(), (length, oldest), strict=True)
    ]


# Registered with core.metrics by QueriesConfig.ready.
BACKLOG_SCRAPE = metrics.ScrapeSource(read=_backlog_read, gauges=_backlog_gauges)
