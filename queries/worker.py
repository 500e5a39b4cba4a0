"""The rq worker classes the gateway runs (settings.RQ["WORKER_CLASS"]; WORKER_FORK picks one)."""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections
from redis.client import Pipeline
from rq import Queue, SimpleWorker, Worker
from rq.job import Job as RqJob
from rq.worker import WorkerStatus

from queries import services, signals
from queries.pool import CliPoolWorkerMixin
from queries.services import breaker, journal

logger = logging.getLogger(__name__)

# How often a worker holding jobs for the breaker looks at it again, and sends its heartbeat.
_HOLD_POLL = 0.25
_HOLD_HEARTBEAT = 5.0


class GatewayWorker(CliPoolWorkerMixin, Worker):
    """rq's forking worker, plus: a work horse that dies mid-job fails its Job as ``worker_lost``.

    Without this the Job row would stay ``running`` with its dedup mark held until it expired.
    Every WEBHOOK_SWEEP_INTERVAL it sends ``queries.signals.worker_maintenance`` (the webhooks app
    re-queues deliveries whose rq jobs were lost), writes journaled cache hits to the database and
    fails the jobs of workers that died on this host.
    """

    @property
    def dequeue_timeout(self) -> int:
        # An idle worker blocks in BLPOP for this long: wake often enough for the sweep to be on time.
        return min(super().dequeue_timeout, settings.WEBHOOK_SWEEP_INTERVAL)

    @property
    def should_run_maintenance_tasks(self) -> bool:
        return super().should_run_maintenance_tasks or time.monotonic() >= getattr(self, "_next_sweep", 0.0)

    def run_maintenance_tasks(self) -> None:
        if super().should_run_maintenance_tasks:
            super().run_maintenance_tasks()
        if time.monotonic() < getattr(self, "_next_sweep", 0.0):
            return
        self._next_sweep = time.monotonic() + settings.WEBHOOK_SWEEP_INTERVAL
        # The apps above queries hook in here (webhooks re-queue deliveries that are due).
        signals.send(signals.worker_maintenance)
        try:
            # Web processes record cache hits as they come; this covers the time none is running.
            journal.journal_drain()
        except Exception:
            logger.exception("could not write journaled requests; the next sweep retries")
        finally:
            connections.close_all()
        self._fail_orphaned_jobs()

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        self._fail_orphaned_jobs()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        # While the upstream breaker is open, take no job: queued jobs wait in their queues instead of
        # burning a CLI run each. Half-open, one worker at a time takes the probe (services.breaker).
        breaker.breaker_probe_release(holder=self.name)
        holding_since: float | None = None
        next_heartbeat = 0.0
        while not breaker.breaker_worker_admit(holder=self.name):
            if holding_since is None:
                holding_since = time.monotonic()
                self.log.warning("Worker %s: upstream circuit breaker open; holding queued jobs", self.name)
                self.procline("Holding: upstream circuit breaker open")
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + _HOLD_HEARTBEAT
                self.heartbeat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
            time.sleep(_HOLD_POLL)
        if holding_since is not None:
            held = time.monotonic() - holding_since
            self.log.info("Worker %s: taking jobs again after holding for %.1f s", self.name, held)
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def _fail_orphaned_jobs(self) -> None:
        try:
            services.job_orphans_fail(idle_pid=os.getpid())
        except Exception:
            logger.exception("could not look for jobs whose worker died; the next sweep retries")
        finally:
            connections.close_all()

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        # A Redis that restarted without persistence has forgotten this worker: register it again, or
        # /ready and the admin would report no worker until this process restarts.
        if pipeline is None and not self.connection.exists(self.key):
            self.log.warning("Worker %s: registration lost (Redis restarted?); registering again", self.name)
            self.register_birth()
        super().heartbeat(timeout, pipeline)

    def handle_work_horse_killed(self, job: RqJob, retpid: int, ret_val: int, rusage: Any) -> None:
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


class GatewayInProcessWorker(GatewayWorker):
    """The gateway's default worker: each job runs in this process, as in rq's SimpleWorker.

    A work horse forked per job costs about 40 ms of CPU and 30 ms of latency (copy-on-write faults
    over the worker's memory, a new database connection, rq's bookkeeping in the child): 5-7% of the
    CPU a CLI run takes, enough to keep a burst of queries from keeping up with the bare CLI on a
    small machine (README, "Performance"). The runner already stops the CLI at CLAUDE_TIMEOUT, and
    rq's job timeout still applies (SIGALRM in this process). What forking bought: a job that kills
    its process (out of memory, say) no longer takes only the horse. Here it takes the worker;
    rqworker-pool starts another, which fails the job as ``worker_lost`` and kills its CLI
    (services.job_orphans_fail), as every worker's maintenance does for any worker that died on this
    host. WORKER_FORK=true runs GatewayWorker, which forks, instead.
    """

    def execute_job(self, job: RqJob, queue: Queue) -> None:
        with self.cli_pool_job(job):
            # The connection lives across jobs (no reconnect per job) unless it broke or grew old.
            close_old_connections()
            try:
                execution = self.prepare_execution(job)
                self.perform_job(job, queue, execution)
                self.set_state(WorkerStatus.IDLE)
            finally:
                close_old_connections()

    def get_heartbeat_ttl(self, job: RqJob, working_time: float = 0.0) -> int:
        # No heartbeat is sent while a job runs in this process: the registration must outlive the job.
        return SimpleWorker.get_heartbeat_ttl(self, job, working_time)  # type: ignore[arg-type]

    def kill_horse(self, sig: signal.Signals = signal.SIGTERM) -> None:
        # There is no horse. rq's Worker would signal the process group of pid 0: this worker's own,
        # and with it the whole rqworker-pool. Cancel a running job with services.job_cancel.
        self.log.warning("Worker %s: jobs run in-process; stop one with the gateway's cancel", self.name)

    def wait_for_horse(self) -> tuple[int | None, int | None, resource.struct_rusage | None]:
        return None, None, None
