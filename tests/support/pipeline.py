"""The query pipeline in the test process: plain hashes, queued jobs run here, cached answers seeded."""

from __future__ import annotations

import json

from django.conf import settings

from core.redis import redis_client
from queries import services
from queries.models import Job

QUESTION = "What is 2+2?"

# Keys that are not cached answers, though some look like them: a purge of the cache must keep them.
OTHER_KEYS = [
    "dedup:abc",
    "metrics:counters",
    "claudeish",
    "rq:queue:default",
    "gateway:1:claude:x",
    "x:claude:1",
]


def plain_hash(text: str = QUESTION) -> str:
    """The hash an anonymous submission of ``text`` gets (no MCP server, no model)."""
    return services.query_hash(normalized=services.normalize_query(text), model=None, servers=[])


def run_queued_jobs() -> int:
    """Run every queued rq job in this process (rq's SimpleWorker, burst mode); returns how many ran."""
    import django_rq
    from rq import SimpleWorker

    queues = [django_rq.get_queue(name) for name in settings.RQ_QUEUE_NAMES]
    worker = SimpleWorker(queues, connection=queues[0].connection)
    before = Job.objects.filter(state__in=Job.FINISHED_STATES).count()
    worker.work(burst=True)
    return Job.objects.filter(state__in=Job.FINISHED_STATES).count() - before


def seed_cache(n: int) -> list[str]:
    """``n`` cached answers under made-up hashes; returns the hashes."""
    redis = redis_client()
    hashes = [f"{i:064x}" for i in range(n)]
    pipe = redis.pipeline()
    for h in hashes:
        pipe.set(f"claude:{h}", json.dumps({"jobId": "x", "result": {}}), ex=600)
    pipe.execute()
    return hashes


def seed_other_keys() -> None:
    redis = redis_client()
    for key in OTHER_KEYS:
        redis.set(key, "keep")
