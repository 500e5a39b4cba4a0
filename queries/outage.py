"""What the gateway's rq workers add to rq's loop so that they survive Redis and stop in time.

rq's work loop quits on a Redis error raised anywhere but in its dequeue (its suspension check,
maintenance, heartbeats, a job's bookkeeping), and nothing restarts a plain ``rqworker``. And a stop
signal raises ``StopRequested`` wherever the worker happens to be: inside code that catches
``Exception`` (the warm CLI pool's refill, the sweep) it was swallowed and the worker ran on until
something killed it. Two mixins for queries.worker's classes:

- :class:`RedisOutageMixin` (first in the MRO): every Redis call of the loop is ridden out. The worker
  logs the outage once, polls Redis with backoff (up to REDIS_RETRY_MAX seconds apart), and once it
  answers registers again if Redis forgot it (a worker busy through the whole outage finds out at its
  next heartbeat: registered means listed in rq's worker set, not merely a key that the job's own
  bookkeeping may have written again), then schedules a reconciliation: queued jobs that rq
  lost are queued again at once, and running jobs whose worker is gone are settled as
  ``worker_lost`` once every live worker has had time to heartbeat (WORKER_STALE_AFTER). One worker
  at a time does it (queries.services.jobs_reconcile takes a Redis lock). Warm CLIs stay as they are.
- :class:`SafeStopMixin` (just above rq's Worker): a stop signal raises only where that is safe (while
  the worker waits for a job); elsewhere it is noted and the loop ends at its next step. A running job
  gets WORKER_STOP_GRACE seconds; then the worker stops it (``stop_running_job``) and the job goes back
  on its queue. Deregistering tolerates a Redis that is gone.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import redis.exceptions
from django.conf import settings
from django.db import connections
from redis.client import Pipeline
from rq import worker_registration
from rq.exceptions import StopRequested
from rq.utils import now
from rq.worker import WorkerStatus

from queries import services
from queries.services.workers import CURRENT_JOB_FIELD

logger = logging.getLogger(__name__)

REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# Longest wait between two tries while Redis is unavailable (the first is after 0.1 s).
REDIS_RETRY_MAX = 2.0
# Seconds within which a second plain heartbeat adds nothing (the TTL it sets is minutes long).
HEARTBEAT_REPEAT = 1.0
T = TypeVar("T")

if TYPE_CHECKING:
    from rq.worker import BaseWorker

    _Worker = BaseWorker
else:
    _Worker = object


class WorkerStopping(BaseException):
    """Raised in a worker's main thread when a stop's grace ran out during a job.

    A BaseException, so that the job's own ``except Exception`` does not record it as the job's
    failure: the runner kills the CLI's process group on the way out and the job is put back.
    """


class SafeStopMixin(_Worker):
    """Stop signals that end the worker promptly without interrupting it where that is unsafe."""

    _interruptible = False
    job_stopped = False

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        if self._stop_requested:
            raise StopRequested()
        self._interruptible = True
        try:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        finally:
            self._interruptible = False

    @contextmanager
    def uninterruptible(self) -> Iterator[None]:
        """A stop signal that arrives inside waits for the end (then raises StopRequested if idle)."""
        was = self._interruptible
        self._interruptible = False
        try:
            yield
        finally:
            self._interruptible = was
        if was and self._stop_requested and not self._busy():
            raise StopRequested()

    def _busy(self) -> bool:
        return self.get_state() == WorkerStatus.BUSY

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._shutdown_requested_date = now()
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        if self._busy():
            self._stop_requested = True
            grace = settings.WORKER_STOP_GRACE
            self.log.info(
                "Worker %s: stopping after the running job, or in %s s",
                self.name,
                grace,
            )
            try:
                self.set_shutdown_requested_date()
            except REDIS_DOWN:
                pass
            timer = threading.Timer(grace, self._stop_grace_over)
            timer.daemon = True
            timer.start()
        elif self._interruptible:
            raise StopRequested()
        else:
            self._stop_requested = True

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        # rqworker-pool passes a stop on as a second signal, right after the supervisor's own.
        requested = self._shutdown_requested_date
        if requested is not None and (now() - requested).total_seconds() < 1:
            return
        if self._busy():
            self._stop_grace_over()
            return
        raise SystemExit()

    def _stop_grace_over(self) -> None:
        if self._busy():
            self.log.warning("Worker %s: stopping the running job to stop in time", self.name)
            self.stop_running_job()

    def stop_running_job(self) -> None:
        """Stop the job that is running now; it goes back on its queue (queries.worker)."""
        raise NotImplementedError

    def set_shutdown_requested_date(self) -> None:
        try:
            super().set_shutdown_requested_date()
        except REDIS_DOWN:
            pass

    def teardown(self) -> None:
        try:
            super().teardown()
        except REDIS_DOWN as exc:
            self.log.warning("Worker %s: could not deregister, Redis is unavailable: %s", self.name, exc)

    def unsubscribe(self) -> None:
        # rq joins the command channel's thread for up to a second, the time it sleeps in a read: a
        # second of every stop. The thread is a daemon; stopping it is enough.
        thread = self.pubsub_thread
        if thread is None:
            return
        self.pubsub_thread = None
        thread.stop()
        try:
            self.pubsub.unsubscribe()
        except REDIS_DOWN:
            pass

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        # The command channel's thread: quiet while Redis is away (the main loop logs the outage).
        if isinstance(exc, redis.exceptions.ConnectionError):
            time.sleep(1.0)
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)


if TYPE_CHECKING:
    _Outage = SafeStopMixin
else:
    _Outage = object


class RedisOutageMixin(_Outage):
    """Ride out Redis outages and flushes: wait, register again, reconcile (module docstring)."""

    redis_down_errors = REDIS_DOWN
    _outage_since: float | None = None
    _requeue_at: float | None = None
    _settle_at: float | None = None
    _current_job: str | None = None
    _plain_beat_at: float | None = None

    @property
    def _beat_lock(self) -> threading.RLock:
        lock = self.__dict__.get("_beat_lock_")
        if lock is None:
            lock = self.__dict__.setdefault("_beat_lock_", threading.RLock())
        return lock

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        # A worker that starts after a crash or a restart of Redis looks for jobs rq lost meanwhile.
        self.recovery_schedule()

    # --- riding out ----------------------------------------------------------------------------

    def riding_out(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)``, again and again until Redis answers (waiting in between)."""
        while True:
            try:
                return call(*args)
            except REDIS_DOWN as exc:
                self.redis_wait(exc)

    def riding_out_job(self, run: Callable[[], None]) -> None:
        """Run a job's execution; if Redis went away in rq's bookkeeping, wait for it. The database
        says what became of the job: one that never started is queued again by the reconciliation."""
        try:
            run()
        except REDIS_DOWN as exc:
            self._state = WorkerStatus.IDLE.value
            self.redis_wait(exc)

    def outage_noticed(self, exc: BaseException | None = None) -> None:
        """Log an outage once, however many calls fail during it."""
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self.log.warning("Worker %s: Redis is unavailable (%s); waiting for it", self.name, exc)

    def redis_wait(self, exc: BaseException) -> None:
        """Block until Redis answers and this worker is registered again."""
        self.outage_noticed(exc)
        delay = 0.1
        while True:
            if self._stop_requested and not self._busy():
                raise StopRequested()
            time.sleep(delay)
            try:
                self.connection.ping()
                self.registration_check()
                break
            except REDIS_DOWN:
                delay = min(delay * 2, REDIS_RETRY_MAX)
        since = self._outage_since or time.monotonic()
        self._outage_since = None
        self.log.warning("Worker %s: Redis is back after %.1f s", self.name, time.monotonic() - since)
        self.recovery_schedule()

    def check_for_suspension(self, burst: bool) -> None:
        with self.uninterruptible():
            self.riding_out(super().check_for_suspension, burst)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        return self.riding_out(super().dequeue_job_and_maintain_ttl, timeout, max_idle_time)

    # --- heartbeats and registration -------------------------------------------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None:
            self._plain_beat_at = None  # another TTL than the plain heartbeat's may be set
            super().heartbeat(timeout, pipeline)
            return
        if timeout is None and self._plain_beat_at is not None:
            # rq's loop beats after a job and twice around the dequeue that follows: back to back
            # in a busy worker. One plain beat within HEARTBEAT_REPEAT stands for the next.
            if time.monotonic() - self._plain_beat_at < HEARTBEAT_REPEAT:
                return
        with self.uninterruptible():
            self.riding_out(self.heartbeat_now, timeout)

    def heartbeat_now(self, timeout: int | None = None) -> None:
        """One heartbeat in one round trip; registers again if Redis forgot this worker."""
        with self._beat_lock:
            with self.connection.pipeline(transaction=False) as pipe:
                self._registered_read(pipe)
                super().heartbeat(timeout, pipe)
                pipe.hset(self.key, CURRENT_JOB_FIELD, self._current_job or "")
                member, born, *_ = pipe.execute()
            if not (member and born):
                self._register_again()
            self._plain_beat_at = time.monotonic() if timeout is None else None

    def registration_check(self) -> None:
        with self._beat_lock:
            with self.connection.pipeline(transaction=False) as pipe:
                self._registered_read(pipe)
                member, born = pipe.execute()
            if not (member and born):
                self._register_again()

    def _registered_read(self, pipe: Pipeline) -> None:
        # Registered means listed in rq's set of workers (what Worker.all, /ready and the admin read)
        # with the hash register_birth wrote. The key alone proves nothing: after a restart of Redis
        # the loop's own writes (a job's bookkeeping, its state, the current job) create it again,
        # without the birth and without the listing.
        pipe.sismember(self.redis_workers_keys, self.key)
        pipe.hexists(self.key, "birth")

    def _register_again(self) -> None:
        # A Redis that restarted without persistence (or was flushed) has forgotten this worker: /ready
        # and the admin would report no worker, and the reconciliation would think its job orphaned.
        # One transaction (not register_birth, which refuses a key that exists): whatever the loop or
        # the heartbeat thread writes meanwhile lands before or after, and the fields it wrote stay.
        self.log.warning("Worker %s: registration lost (Redis restarted?); registering again", self.name)
        self.last_heartbeat = now()
        if self.birth_date is None:
            self.birth_date = self.last_heartbeat
        fields = {**self.serialize(), "state": self.get_state(), CURRENT_JOB_FIELD: self._current_job or ""}
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.hdel(self.key, "death")
            pipe.hset(self.key, mapping=fields)
            worker_registration.register(self, pipe)
            pipe.expire(self.key, self.worker_ttl + 60)
            pipe.execute()
        self.recovery_schedule()

    def current_job_set(self, job_id: str | None) -> None:
        """Name the running job in the registration (the reconciliation's evidence that it is alive)."""
        self._current_job = job_id
        try:
            self.connection.hset(self.key, CURRENT_JOB_FIELD, job_id or "")
        except REDIS_DOWN:
            self.outage_noticed()

    # --- reconciling after an outage ------------------------------------------------------------

    def recovery_schedule(self) -> None:
        at = time.monotonic()
        self._requeue_at = at
        # Live workers write their registration and current job back within a heartbeat interval.
        self._settle_at = at + settings.WORKER_STALE_AFTER

    def recovery_due(self) -> bool:
        at = time.monotonic()
        return any(due is not None and at >= due for due in (self._requeue_at, self._settle_at))

    def recovery_run(self) -> None:
        at = time.monotonic()
        if self._requeue_at is not None and at >= self._requeue_at:
            self._requeue_at = None
            self._scheduler_revive()
            self.reconcile(grace_seconds=0.0, settle_running=False)
        if self._settle_at is not None and at >= self._settle_at:
            self._settle_at = None
            self.reconcile(grace_seconds=float(settings.WORKER_STALE_AFTER))

    def _scheduler_revive(self) -> None:
        # rq's scheduler (webhook retries run through it) exits on a Redis error; rq itself would
        # start it again only at its next maintenance, minutes later.
        scheduler = self.scheduler
        if scheduler is not None and (scheduler._process is None or not scheduler._process.is_alive()):
            scheduler.acquire_locks(auto_start=True)

    def reconcile(
        self, *, grace_seconds: float, settle_running: bool = True, requeue_grace: float | None = None
    ) -> None:
        """One reconciliation pass, unless another worker is doing one. Raises on a Redis outage."""
        try:
            done = services.jobs_reconcile(
                grace_seconds=grace_seconds, settle_running=settle_running, requeue_grace=requeue_grace
            )
        except REDIS_DOWN:
            raise
        except Exception:
            logger.exception("could not reconcile the jobs with Redis; the next sweep retries")
            return
        finally:
            connections.close_all()
        if done is not None and (done.lost or done.requeued):
            logger.warning(
                "reconciled: %d queued jobs that rq had lost queued again, %d running jobs worker_lost",
                len(done.requeued),
                len(done.lost),
            )
