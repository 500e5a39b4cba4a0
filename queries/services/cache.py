"""The answer cache: what identifies an answer, and the one home of its Redis entries.

An answer is identified by the SHA-256 of the normalized query, the model and the MCP servers that
routing chose (and, with CACHE_SCOPE=key, the caller's key). Its entry is ``claude:{hash}`` holding
``{"jobId", "result"}``, for CACHE_TTL seconds or the intent's own lifetime. Only successful runs are
cached. A cache hit is answered and recorded in one Redis round trip by ``journal.journal_cache_hit``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from redis import Redis
from redis.exceptions import RedisError

from core.redis import redis_client
from queries.models import Job

logger = logging.getLogger(__name__)

CACHE_KEY = "claude:{}"
CACHE_PURGE_BATCH = 500
_HASH_CHARS = frozenset("0123456789abcdef")
# MEMORY USAGE is asked of this many entries and the average scaled up: exact for a small cache,
# and a bounded cost (one pipelined round trip) for a big one.
MEMORY_SAMPLE = 200
SCAN_BATCH = 1000

# KEYS[1] a cache entry; ARGV[1] a job id: delete the entry if it still names that job.
_PURGE_SCRIPT = """
local entry = redis.call('GET', KEYS[1])
if not entry then return 0 end
local ok, decoded = pcall(cjson.decode, entry)
if ok and type(decoded) == 'table' and decoded['jobId'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def normalize_query(text: str) -> str:
    """Unicode NFC, trimmed, whitespace runs collapsed to one space, lowercased."""
    return " ".join(unicodedata.normalize("NFC", text).split()).lower()


def query_hash(
    *,
    normalized: str,
    model: str | None,
    servers: Iterable[str],
    scope: str | None = None,
    lineage: str | None = None,
    prompt: dict[str, Any] | None = None,
) -> str:
    """SHA-256 over a canonical JSON of what decides the answer: query, model and MCP servers.

    ``scope`` (see queries.auth.cache_scope) keeps one key's cache entries and in-flight marks apart
    from another's; without one the hash is the same for every caller. ``prompt`` is what a prompt
    richer than one string adds (queries.prompts.Prompt.key_fields: the system prompt and every
    content block, images by the SHA-256 of their bytes); a plain string hashes as it always has.
    ``lineage`` is the conversation a continued turn follows (queries.lineage): "why?" after two
    different answers is two different questions.
    """
    fields: dict[str, Any] = {"query": normalized, "model": model or None, "mcpServers": sorted(servers)}
    if scope is not None:
        fields["scope"] = scope
    if lineage is not None:
        fields["lineage"] = lineage
    if prompt is not None:
        fields["prompt"] = prompt
    canonical = json.dumps(
        fields,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


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


def cache_entry_purge(*, query_hash: str, job_id: str) -> bool:
    """Delete the cache entry of ``query_hash`` if it names ``job_id``; True if it did."""
    return bool(redis_client().eval(_PURGE_SCRIPT, 1, CACHE_KEY.format(query_hash), job_id))


def cache_job_deleted(*, instance: Job, **kwargs: object) -> None:
    """Drop a deleted job's cached answer: requests it answered could not point to the job."""
    try:
        cache_entry_purge(query_hash=instance.hash, job_id=str(instance.id))
    except RedisError:
        # The recorder drops the entry when it meets a request answered from it.
        logger.warning("could not drop the cache entry of deleted job %s", instance.id, exc_info=True)


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


def cache_figures(*, redis: Redis | None = None, sample: int = MEMORY_SAMPLE) -> dict[str, Any]:
    """How many answers are cached (``claude:*``) and about how much memory they take.

    The count walks the keyspace with SCAN (never KEYS, which blocks Redis while it runs).
    """
    redis = redis or redis_client()
    count = 0
    sampled: list[bytes] = []
    for key in redis.scan_iter(match=CACHE_KEY.format("*"), count=SCAN_BATCH):
        count += 1
        if len(sampled) < sample:
            sampled.append(key)
    memory = 0
    if sampled:
        pipe = redis.pipeline(transaction=False)
        for key in sampled:
            pipe.memory_usage(key)
        sizes = [size for size in pipe.execute() if size is not None]
        if sizes:
            memory = round(sum(sizes) / len(sizes) * count)
    info = redis.info("memory")
    return {
        "entries": count,
        "memoryBytes": memory,
        "memoryExact": count <= sample,
        "redisUsedMemoryBytes": int(info.get("used_memory", 0)),
    }
