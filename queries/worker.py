"""The rq worker classes the gateway runs (settings.RQ["WORKER_CLASS"]; WORKER_FORK picks one).

Beside rq's own loop they ride out Redis outages and stop in time (queries/outage.py), heartbeat
every WORKER_HEARTBEAT_INTERVAL idle or busy (a worker unheard of for WORKER_STALE_AFTER is dead to
/ready and the dashboard, queries.services.workers), record the journal of cache hits in a thread of
their own, and sweep: webhooks, orphaned jobs, and the reconciliation of the jobs with Redis.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading
import time
from types import FrameType
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections
from rq import Queue, SimpleWorker, Worker
from rq.job import Job as RqJob
from rq.worker import WorkerStatus

from core.db import connections_drop_broken
from queries import services, signals
from queries.outage import RedisOutageMixin, SafeStopMixin, WorkerStopping
from queries.pool import CliPoolWorkerMixin
from queries.services import breaker, journal

logger = logging.getLogger(__name__)

RUN_JOB = "queries.tasks.run_job"
# How often a worker holding jobs for the breaker looks at it again, and sends its heartbeat.
_HOLD_POLL = 0.25
_HOLD_HEARTBEAT = 5.0


class GatewayWorker(RedisOutageMixin, CliPoolWorkerMixin, SafeStopMixin, Worker):
    """rq's forking worker, plus: a work horse that dies mid-job fails its Job as ``worker_lost``.

    Without this the Job row would stay ``running`` with its dedup mark held until it expired.
    Every WEBHOOK_SWEEP_INTERVAL it sends ``queries.signals.worker_maintenance`` (the webhooks app
    re-queues deliveries whose rq jobs were lost), fails the jobs of workers that died on this host,
    and reconciles the jobs with Redis (one worker at a time: queries.services.jobs_reconcile).
    A thread of its own writes journaled cache hits to the database every WORKER_HEARTBEAT_INTERVAL,
    idle or running a job (queries/services/journal.py).
    """

    @property
    def dequeue_timeout(self) -> int:
        # An idle worker blocks in BLPOP for this long: it wakes to heartbeat and for the sweep.
        return min(
            super().dequeue_timeout, settings.WEBHOOK_SWEEP_INTERVAL, settings.WORKER_HEARTBEAT_INTERVAL
        )

    @property
    def should_run_maintenance_tasks(self) -> bool:
        return (
            super().should_run_maintenance_tasks
            or time.monotonic() >= getattr(self, "_next_sweep", 0.0)
            or self.recovery_due()
        )

    def run_maintenance_tasks(self) -> None:
        with self.uninterruptible():
            self.riding_out(self._maintenance)

    def _maintenance(self) -> None:
        if super().should_run_maintenance_tasks:
            super().run_maintenance_tasks()
        self.recovery_run()
        if time.monotonic() < getattr(self, "_next_sweep", 0.0):
            return
        self._next_sweep = time.monotonic() + settings.WEBHOOK_SWEEP_INTERVAL
        # The apps above queries hook in here (webhooks re-queue deliveries that are due).
        signals.send(signals.worker_maintenance)
        self._fail_orphaned_jobs()
        # A worker names its job in its registration before it claims the row, and heartbeats at
        # least every WORKER_HEARTBEAT_INTERVAL: a running job whose worker has been silent for
        # WORKER_STALE_AFTER is lost, on any host. A job whose submission lost the database between
        # its row and its enqueue is queued again after as long.
        stale = float(settings.WORKER_STALE_AFTER)
        self.reconcile(grace_seconds=stale, requeue_grace=stale)

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        # The work horse's parent heartbeats between its checks on the horse.
        self.job_monitoring_interval = settings.WORKER_HEARTBEAT_INTERVAL
        self._fail_orphaned_jobs()
        journal.recorder_start(worker=True)

    def teardown(self) -> None:
        journal.recorder_stop()
        super().teardown()

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

    def execute_job(self, job: RqJob, queue: Queue) -> None:
        self.current_job_set(job.id)
        try:
            self.riding_out_job(lambda: self.execute_job_now(job, queue))
        except WorkerStopping:
            pass
        finally:
            self.current_job_set(None)
        if self.job_stopped:
            self.job_stopped = False
            self._job_put_back(job)

    def execute_job_now(self, job: RqJob, queue: Queue) -> None:
        super().execute_job(job, queue)

    def _job_put_back(self, job: RqJob) -> None:
        """A job stopped by this worker's own stop goes back on its queue, to run again."""
        if job.func_name != RUN_JOB or not job.args:
            return
        try:
            services.job_put_back(job_id=job.args[0])
        except Exception:
            logger.exception("job %s: could not put it back on its queue; reconcile will", job.args[0])
        finally:
            connections.close_all()

    def stop_running_job(self) -> None:
        # The horse dies; handle_work_horse_killed leaves the job to _job_put_back.
        if self.horse_pid:
            self.job_stopped = True
            Worker.kill_horse(self, signal.SIGTERM)

    def maintain_heartbeats(self, job: RqJob, execution: Any) -> None:
        # While a work horse runs: a Redis outage must not take the worker (and so its horse) down.
        try:
            self.registration_check()
            super().maintain_heartbeats(job, execution)
        except self.redis_down_errors as exc:
            self.outage_noticed(exc)

    def handle_work_horse_killed(self, job: RqJob, retpid: int, ret_val: int, rusage: Any) -> None:
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        if job.func_name != RUN_JOB or not job.args or self.job_stopped:
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

    The loop that heartbeats is busy while a job runs here, so a thread heartbeats meanwhile; and a
    stop's grace ends a job by raising WorkerStopping in the main thread (SIGUSR2, sent to itself).
    """

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        signal.signal(signal.SIGUSR2, self._raise_worker_stopping)
        self._beats_stopped = threading.Event()
        threading.Thread(target=self._beat_while_busy, name="worker-heartbeat", daemon=True).start()

    def _beat_while_busy(self) -> None:
        while not self._beats_stopped.wait(settings.WORKER_HEARTBEAT_INTERVAL):
            if self.get_state() != WorkerStatus.BUSY:
                continue
            try:
                self.heartbeat_now()
            except self.redis_down_errors as exc:
                self.outage_noticed(exc)
            except Exception:
                logger.exception("worker heartbeat failed; the next one retries")

    def stop_running_job(self) -> None:
        self.job_stopped = True
        # A signal to the main thread itself, so that it also cuts short a wait it is blocked in.
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR2)

    def _raise_worker_stopping(self, signum: int, frame: FrameType | None) -> None:
        if self.job_stopped and self.get_state() == WorkerStatus.BUSY:
            raise WorkerStopping("the worker is stopping and the job's grace ran out")

    def teardown(self) -> None:
        beats = getattr(self, "_beats_stopped", None)
        if beats is not None:
            beats.set()
        super().teardown()

    def execute_job_now(self, job: RqJob, queue: Queue) -> None:
        with self.cli_pool_job(job):
            # The connection lives across jobs (no reconnect per job) unless it broke or grew old.
            close_old_connections()
            connections_drop_broken()
            try:
                execution = self.prepare_execution(job)
                self.perform_job(job, queue, execution)
                self.set_state(WorkerStatus.IDLE)
            finally:
                close_old_connections()

    def get_heartbeat_ttl(self, job: RqJob, working_time: float = 0.0) -> int:
        # The registration must outlive the job even if the heartbeat thread stalls.
        return SimpleWorker.get_heartbeat_ttl(self, job, working_time)  # type: ignore[arg-type]

    def kill_horse(self, sig: signal.Signals = signal.SIGTERM) -> None:
        # There is no horse. rq's Worker would signal the process group of pid 0: this worker's own,
        # and with it the whole rqworker-pool. Cancel a running job with services.job_cancel.
        self.log.warning("Worker %s: jobs run in-process; stop one with the gateway's cancel", self.name)

    def wait_for_horse(self) -> tuple[int | None, int | None, resource.struct_rusage | None]:
        return None, None, None
