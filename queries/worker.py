"""The rq worker class the gateway runs (settings.RQ["WORKER_CLASS"])."""

from __future__ import annotations

from django.db import connections
from rq import Worker

from queries import services


class GatewayWorker(Worker):
    """rq's forking worker, plus: a work horse that dies mid-job fails its Job as ``worker_lost``.

    Without this the Job row would stay ``running`` with its dedup mark held until it expired.
    """

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage) -> None:  # type: ignore[no-untyped-def]
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        if job.func_name != "queries.tasks.run_job" or not job.args:
            return
        try:
            services.job_worker_lost(
                job_id=job.args[0], reason=f"The worker process died (wait status {ret_val})."
            )
        finally:
            # Work horses are forked from this process: it must not keep a connection they would inherit.
            connections.close_all()
