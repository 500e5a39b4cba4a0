"""``manage.py cancel_job ID``: cancel a queued or running job."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from queries import services
from queries.models import Job


class Command(BaseCommand):
    help = (
        "Cancel a queued job (at once) or a running one (its worker kills the CLI's process group within "
        "a second). The job ends in state 'cancelled' and its callers' webhooks get query.failed. Exits "
        "non-zero if the job is unknown or already finished."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", help="The job's id (the API's jobId).")
        parser.add_argument(
            "--wait",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="How long to wait for a running job's worker to confirm (default 10; 0: do not wait).",
        )

    def handle(self, *args: object, job_id: str, wait: float, **options: object) -> None:
        try:
            result = services.job_cancel(
                job_id=job_id, reason="Cancelled by an operator (manage.py cancel_job)."
            )
        except services.OperationRefused as exc:
            raise CommandError(str(exc)) from exc
        if result == "cancelled":
            self.stdout.write(f"Job {job_id} cancelled.")
            return
        self.stdout.write(f"Job {job_id} is running: its worker was told to stop it.")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            state = Job.objects.filter(id=job_id).values_list("state", flat=True).first()
            if state in Job.FINISHED_STATES:
                self.stdout.write(f"Job {job_id} {state}.")
                return
            time.sleep(0.2)
        if wait:
            raise CommandError(
                f"Job {job_id} is still running after {wait:g} s: is its worker alive? "
                "`manage.py reconcile` settles jobs whose worker is gone."
            )
