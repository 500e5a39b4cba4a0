from datetime import timedelta
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from queries.services import api_key_create


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError
    return number


def _money(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError from None
    if not amount.is_finite() or amount < 0:
        raise ValueError
    return amount


def _names(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class Command(BaseCommand):
    help = (
        "Create an API key. The key is printed once, alone on the last line, and stored only as a hash. "
        "Limits left out are unlimited; change them later in the admin."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Who or what the key is for.")
        parser.add_argument("--rate-limit", type=_positive_int, help="Submissions per rolling minute.")
        parser.add_argument("--max-concurrent", type=_positive_int, help="Jobs queued or running at once.")
        parser.add_argument("--monthly-budget", type=_money, help="USD per UTC calendar month.")
        parser.add_argument("--priorities", type=_names, help="Allowed priorities, comma-separated.")
        parser.add_argument("--models", type=_names, help="Allowed models, comma-separated.")
        parser.add_argument(
            "--expires-in-days", type=_positive_int, help="Refuse the key after this many days."
        )

    def handle(self, *args: object, name: str, **options: object) -> None:
        limits = {
            "rate_limit_per_minute": options.get("rate_limit"),
            "max_concurrent_jobs": options.get("max_concurrent"),
            "monthly_budget_usd": options.get("monthly_budget"),
            "allowed_priorities": options.get("priorities") or [],
            "allowed_models": options.get("models") or [],
        }
        expires_in_days = options.get("expires_in_days")
        if isinstance(expires_in_days, int):
            limits["expires_at"] = timezone.now() + timedelta(days=expires_in_days)
        try:
            api_key, key = api_key_create(name=name, limits=limits)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            raise CommandError("; ".join(f"{f}: {' '.join(m)}" for f, m in exc.message_dict.items())) from exc
        self.stderr.write(
            f"Created API key {api_key.name!r} ({api_key.prefix}…). Store it now: it is not shown again."
        )
        self.stdout.write(key)
