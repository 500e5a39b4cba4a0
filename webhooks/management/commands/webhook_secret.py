"""``manage.py webhook_secret KEY``: give an API key its own webhook signing secret, or rotate it."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q

from queries.models import ApiKey
from webhooks.services import SECRET_ROTATION_GRACE, webhook_secret_create


class Command(BaseCommand):
    help = (
        "Create a webhook signing secret for an API key (by name or key prefix). The secret is printed "
        "once, alone on the last line. Secrets the key already had keep signing for --grace seconds."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", help="The API key's name or prefix (cgw_…).")
        parser.add_argument(
            "--grace",
            type=int,
            default=int(SECRET_ROTATION_GRACE.total_seconds()),
            help="Seconds the previous secrets keep signing (default 86400; 0 ends them now).",
        )

    def handle(self, *args: object, key: str, grace: int, **options: object) -> None:
        if grace < 0:
            raise CommandError("--grace must be 0 or more seconds.")
        matches = list(ApiKey.objects.filter(Q(name=key) | Q(prefix=key)))
        if not matches:
            raise CommandError(f"No API key named {key!r} or with that prefix.")
        if len(matches) > 1:
            raise CommandError(f"{len(matches)} API keys match {key!r}; use the key's prefix.")
        row, secret = webhook_secret_create(
            api_key=matches[0], grace=timedelta(seconds=grace) if grace else None
        )
        self.stderr.write(
            f"New webhook signing secret {row.prefix}… for {matches[0]}. Store it now: it is not shown again."
        )
        self.stdout.write(secret)
