"""rq job functions: take ids, call one service."""

from __future__ import annotations

from queries import services


def run_job(job_id: str) -> str | None:
    job = services.job_run(job_id=job_id)
    return job.state if job is not None else None
