"""``manage.py gateway_query TEXT``: submit a query through the same service as the API."""

from __future__ import annotations

import time
import uuid

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import GatewayError
from queries import services
from queries.models import Job, Priority


class Command(BaseCommand):
    help = (
        "Submit a query as the API does (cache, in-flight dedup, priority queue) and print the answer. "
        "A cached answer prints at once; otherwise the job id is printed, or with --wait the answer "
        "once a worker has run it. Submissions are anonymous (no API key), so they share cache entries "
        "only with other anonymous submissions when CACHE_SCOPE is 'key'."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("text", help="The query, passed to the CLI verbatim.")
        parser.add_argument("--priority", choices=Priority.values, default=Priority.NORMAL)
        parser.add_argument("--model", default=None, help="Passed to the CLI as --model.")
        parser.add_argument("--no-cache", action="store_true", help="Skip the cache lookup.")
        parser.add_argument(
            "--wait", action="store_true", help="Wait for the job to finish and print the answer."
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="Seconds to wait with --wait (default: CLAUDE_TIMEOUT plus 60).",
        )

    def handle(
        self,
        *args: object,
        text: str,
        priority: str,
        model: str | None,
        no_cache: bool,
        wait: bool,
        timeout: float | None,
        **options: object,
    ) -> None:
        if not text.strip():
            raise CommandError("The query is blank.")
        if len(text) > settings.QUERY_MAX_CHARS:
            raise CommandError(f"The query is longer than QUERY_MAX_CHARS ({settings.QUERY_MAX_CHARS}).")
        try:
            submission = services.query_submit(
                api_key=None, query=text, priority=priority, model=model or None, no_cache=no_cache
            )
        except GatewayError as exc:
            raise CommandError(f"The gateway refused the query: {exc.message}") from exc
        self.stderr.write(f"request {submission.request_id}: {submission.outcome}, job {submission.job_id}")
        if submission.result is not None:
            self.stdout.write(submission.result["response"])
            return
        if not wait:
            self.stdout.write(str(submission.job_id))
            return
        job = self.wait_for(
            submission.job_id, timeout if timeout is not None else settings.CLAUDE_TIMEOUT + 60
        )
        if job.state != Job.State.COMPLETED:
            raise CommandError(f"Job {job.id} {job.state}: {job.error_type}: {job.error_message}")
        self.stdout.write(job.response)

    def wait_for(self, job_id: uuid.UUID, timeout: float) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            job = Job.objects.get(id=job_id)
            if job.is_finished:
                return job
            if time.monotonic() >= deadline:
                raise CommandError(
                    f"Job {job_id} is still {job.state} after {timeout:g} s. Is a worker running "
                    "(manage.py rqworker high default low)?"
                )
            time.sleep(0.2)
