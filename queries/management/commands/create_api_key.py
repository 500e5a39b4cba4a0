from django.core.management.base import BaseCommand, CommandError, CommandParser

from queries.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key. The key is printed once, alone on the last line, and stored only as a hash."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Who or what the key is for.")

    def handle(self, *args: object, name: str, **options: object) -> None:
        try:
            api_key, key = api_key_create(name=name)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(
            f"Created API key {api_key.name!r} ({api_key.prefix}…). Store it now: it is not shown again."
        )
        self.stdout.write(key)
