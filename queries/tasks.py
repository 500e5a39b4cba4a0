"""rq job functions: take ids, call one service."""

from __future__ import annotations

from core.logs import log_context
from queries import services
from queries.models import QueryRequest


def run_job(job_id: str) -> str | None:
    # The request that made the job: its requestId ties the worker's lines to the web's.
    origin = (
        QueryRequest.objects.filter(job_id=job_id, outcome=QueryRequest.Outcome.QUEUED)
        .values_list("id", flat=True)
        .first()
    )
    with log_context(request_id=origin, job_id=job_id):
        job = services.job_run(job_id=job_id)
    return job.state if job is not None else None
