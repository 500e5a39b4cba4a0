"""``manage.py purge_sessions``: delete the conversation sessions that have expired (or all of them)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from queries.services.sessions import sessions_purge


class Command(BaseCommand):
    help = (
        "Delete expired conversation sessions (SESSION_TTL after their last use): their CLI session "
        "files go with them, and a turn naming one is a 404 (native) or runs fresh (/v1). --all "
        "deletes every session. Jobs and requests stay."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--all", action="store_true", help="Delete every session, expired or not.")

    def handle(self, *args: object, all: bool, **options: object) -> None:
        deleted = sessions_purge(everything=all)
        self.stdout.write(f"Purged {deleted} session(s).")
