"""``manage.py reconcile``: bring Redis back in line with the database, the source of truth."""

from __future__ import annotations

import signal
import time
from types import FrameType

from django.core.management.base import BaseCommand, CommandError, CommandParser
from redis.exceptions import RedisError

from queries.services import RECONCILE_LOCK_TIMEOUT, jobs_reconcile
from queries.services.journal import journal_drain
from webhooks.services import webhook_deliveries_sweep


class Command(BaseCommand):
    help = (
        "Settle running jobs whose worker is gone (worker_lost; --retry-lost also retries them), queue "
        "again queued jobs missing from Redis, re-queue webhook deliveries that are due (whatever "
        "happened to their rq jobs) and create deliveries that a crash kept from existing, and write "
        "journaled cache hits to the database. One pass by default; --loop repeats it. Workers run the "
        "webhook sweep every WEBHOOK_SWEEP_INTERVAL seconds."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--loop", action="store_true", help="Keep sweeping until SIGTERM or Ctrl-C.")
        parser.add_argument(
            "--interval", type=float, default=10.0, help="Seconds between passes with --loop (default 10)."
        )
        parser.add_argument(
            "--retry-lost",
            action="store_true",
            help="Retry running jobs whose worker is gone (as new jobs) after settling them as worker_lost.",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=60.0,
            help="Seconds a job must have been running or queued before it is judged (default 60).",
        )

    def handle(
        self, *args: object, loop: bool, interval: float, retry_lost: bool, grace: float, **options: object
    ) -> None:
        self.retry_lost = retry_lost
        self.grace = grace
        if not loop:
            try:
                self.handle_one()
            except RedisError as exc:
                raise CommandError(f"Redis is unavailable: {exc}") from exc
            return
        self.stopping = False

        def stop(signum: int, frame: FrameType | None) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while not self.stopping:
            self.handle_one()
            deadline = time.monotonic() + interval
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(0.5, interval))

    def handle_one(self) -> bool:
        """One pass; True if it found anything to do."""
        grace, retry_lost = getattr(self, "grace", 60.0), getattr(self, "retry_lost", False)
        # Workers run the same pass under the same lock: wait for a worker's pass to end.
        done = jobs_reconcile(grace_seconds=grace, retry=retry_lost, wait=RECONCILE_LOCK_TIMEOUT)
        if done is None:
            raise CommandError("another process held the reconcile lock for too long")
        for job, retried in done.lost:
            then = f", retried as {retried.job.id}" if retried is not None else ""
            self.stdout.write(f"job {job.id}: its worker is gone; failed as worker_lost{then}")
        for job in done.requeued:
            self.stdout.write(f"job {job.id}: queued but missing from its rq queue; queued again")
        count = webhook_deliveries_sweep()
        self.stdout.write(f"webhook deliveries queued, created or closed: {count}")
        recorded = journal_drain()
        self.stdout.write(f"journaled cache hits written to the database: {recorded}")
        return count > 0 or bool(done.lost) or bool(done.requeued) or recorded > 0
