"""In-flight marks: ``dedup:{hash}`` names the job answering a query, so identical ones join it.

The mark is claimed with ``SET NX EX`` (DEDUP_TTL) before the job row exists, so N identical
concurrent submissions make exactly one job; it is cleared when the job ends, whatever the outcome.
Redis may lose the marks (a restart without persistence, a flush): the database's partial unique
index ``job_one_active_per_hash`` then refuses a second queued or running job for the hash, and the
submission joins the one it has (:func:`dedup_active_job`).
"""

from __future__ import annotations

import logging
import time
import uuid

from django.conf import settings
from redis import Redis
from redis.exceptions import RedisError

from core.redis import redis_client, redis_text
from queries.models import Job

logger = logging.getLogger(__name__)

DEDUP_KEY = "dedup:{}"
# How long a submitter that lost the dedup race waits for the winner's Job row to appear. The winner
# inserts it right after claiming the mark, so this only runs out if the winner died in between.
DEDUP_JOIN_WAIT = 2.0
SUBMIT_ATTEMPTS = 3

# Delete the in-flight mark only if it still names this job: a later submission may own it by now.
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def dedup_release(*, query_hash: str, job_id: uuid.UUID | str, redis: Redis | None = None) -> None:
    """Clear the in-flight mark for a hash if it still names ``job_id``."""
    try:
        (redis or redis_client()).eval(_RELEASE_SCRIPT, 1, DEDUP_KEY.format(query_hash), str(job_id))
    except RedisError:
        # The mark expires after DEDUP_TTL; until then identical queries join a finished job and
        # are sent on to the cache or a new job by query_submit.
        logger.error("could not clear the in-flight mark of job %s", job_id, exc_info=True)


def dedup_holder(*, query_hash: str, redis: Redis) -> str | None:
    """The id of the job holding the in-flight mark, or None. Raises RedisError."""
    return redis_text(redis.get(DEDUP_KEY.format(query_hash)))


def dedup_active_job(*, query_hash: str, job_id: uuid.UUID | str, redis: Redis) -> Job | None:
    """The queued or running job for a hash that the database holds (deduplicated), or None.

    Called when inserting job ``job_id`` hit the unique index: the mark that ``job_id`` claimed is
    handed to the job found, so the next identical submissions join it through Redis again.
    """
    active = Job.objects.filter(hash=query_hash, state__in=Job.ACTIVE_STATES, deduplicated=True).first()
    if active is not None:
        try:
            redis.set(DEDUP_KEY.format(query_hash), str(active.id), xx=True, ex=settings.DEDUP_TTL)
        except RedisError:
            logger.warning("could not point the in-flight mark of %s at job %s", query_hash, active.id)
    else:
        dedup_release(query_hash=query_hash, job_id=job_id, redis=redis)
    return active


def dedup_wait_for_job(job_id: str) -> Job | None:
    """The job named by a mark, waiting up to DEDUP_JOIN_WAIT for its row to appear (None if not)."""
    deadline = time.monotonic() + DEDUP_JOIN_WAIT
    delay = 0.005
    while True:
        try:
            job = Job.objects.only("id", "state").filter(id=job_id).first()
        except (ValueError, TypeError):
            return None
        if job is not None or time.monotonic() >= deadline:
            return job
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
