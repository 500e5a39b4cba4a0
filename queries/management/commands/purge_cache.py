"""``manage.py purge_cache``: delete cached answers, all of them or one query's."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from redis.exceptions import RedisError

from queries import services


class Command(BaseCommand):
    help = (
        "Delete cached answers (claude:{hash} in Redis): --all deletes every one (SCAN in batches, "
        "never KEYS; no other key is touched), --hash H the answer of one query hash (shown on the "
        "job's admin page). Exits non-zero if there was nothing to purge for --hash."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--all", action="store_true", help="Delete every cached answer.")
        which.add_argument("--hash", dest="query_hash", help="Delete the cached answer of this query hash.")

    def handle(self, *args: object, all: bool, query_hash: str | None, **options: object) -> None:
        try:
            if all:
                deleted = services.cache_purge_all()
                self.stdout.write(f"Purged {deleted} cached answer(s).")
                return
            assert query_hash is not None
            try:
                canonical = services.cache_hash_check(query_hash)
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            if not services.cache_purge(query_hashes=[canonical]):
                raise CommandError(f"No cached answer for {canonical}.")
            self.stdout.write(f"Purged the cached answer of {canonical}.")
        except RedisError as exc:
            raise CommandError(f"Redis is unavailable: {exc}") from exc
