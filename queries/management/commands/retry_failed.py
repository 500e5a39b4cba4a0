"""``manage.py retry_failed``: run recently failed jobs again."""

from __future__ import annotations

import re
from argparse import ArgumentTypeError
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from queries import services

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(value: str) -> timedelta:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` or ``1w``."""
    match = _DURATION.match(value.lower())
    if not match or float(match.group(1)) <= 0:
        raise ArgumentTypeError(f"{value!r} is not a duration such as 30m, 2h or 1d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


class Command(BaseCommand):
    help = (
        "Retry every job that failed within --since (default 1h) and has not been retried yet: each "
        "gets a new job linked to the old one, whose record stays. Cancelled jobs are left alone. "
        "Exits non-zero if any retry could not be made."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since",
            type=duration,
            default=timedelta(hours=1),
            help="How far back to look: 90s, 30m, 2h, 1d, 1w (default 1h).",
        )

    def handle(self, *args: object, since: timedelta, **options: object) -> None:
        outcomes = services.jobs_retry_failed(since=timezone.now() - since)
        if not outcomes:
            self.stdout.write("No failed jobs to retry.")
            return
        problems = 0
        for job, retried, problem in outcomes:
            if retried is None:
                problems += 1
                self.stderr.write(f"{job.id}: not retried: {problem}")
            elif retried.created:
                self.stdout.write(f"{job.id} ({job.error_type}) → retried as {retried.job.id}")
            else:
                self.stdout.write(
                    f"{job.id} ({job.error_type}) → an identical job is in flight: {retried.job.id}"
                )
        if problems:
            raise CommandError(f"{problems} of {len(outcomes)} failed job(s) could not be retried.")
