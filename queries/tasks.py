"""rq job functions: take ids, call one service."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from core.db import connections_reset, database_lost
from core.logs import log_context
from queries import quotas, services
from queries.models import Job

logger = logging.getLogger(__name__)

# Tries of a job whose database connection keeps being dropped under it; after the last the sweep
# settles it (queued again, or worker_lost).
DATABASE_ATTEMPTS = 3


def run_job(job_id: str) -> str | None:
    # The request that made the job: its requestId ties the worker's lines to the web's. Looked up
    # once: the run reads its key and the key's budget from it too.
    try:
        creator = quotas.job_creator_lookup(job_id=job_id)
    except Exception as exc:
        if not database_lost(exc):
            raise
        connections_reset()
        creator = quotas.job_creator_lookup(job_id=job_id)
    with log_context(request_id=creator.request_id if creator is not None else None, job_id=job_id):
        run: Callable[..., Job | None] = functools.partial(services.job_run, creator=creator)
        for attempt in range(1, DATABASE_ATTEMPTS + 1):
            try:
                job = run(job_id=job_id)
                break
            except Exception as exc:
                if not database_lost(exc) or attempt == DATABASE_ATTEMPTS:
                    raise
                # PostgreSQL dropped the connection (a restart, a failover): again on a fresh one.
                logger.warning("job %s: the database connection was lost (%s); running it again", job_id, exc)
                connections_reset()
                run = services.job_run_again
    return job.state if job is not None else None
