"""Figures written for people: money, durations, sizes and times in the text operators read.

JSON output keeps the exact values; these are for terminals and pages.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation


def usd(value: Decimal | float | int | str | None) -> str:
    """Dollars with as many decimals as the amount needs: $1,234.50, $0.53, $0.033, $0.00017.

    Amounts of a dollar or more get cents; smaller ones keep three significant digits, since a
    single CLI run costs fractions of a cent and "$0.00" would hide it.
    """
    if value is None:
        return "n/a"
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    if amount == 0:
        return "$0.00"
    sign, magnitude = ("-" if amount < 0 else ""), abs(amount)
    if magnitude >= 1:
        return f"{sign}${magnitude:,.2f}"
    decimals = max(2, 2 - math.floor(math.log10(magnitude)))
    text = f"{magnitude:.{decimals}f}".rstrip("0")
    if len(text.split(".")[1]) < 2:
        text = f"{magnitude:.2f}"
    return f"{sign}${text}"


def duration(seconds: float | None) -> str:
    """0.07 s, 1.2 s, 45 s, 2 min 5 s, 1 h 3 min, 2 d 4 h."""
    if seconds is None:
        return "n/a"
    if seconds < 0:
        return "-" + duration(-seconds)
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return _two_units(*divmod(whole, 60), "min", "s")
    if whole < 86400:
        return _two_units(whole // 3600, whole % 3600 // 60, "h", "min")
    return _two_units(whole // 86400, whole % 86400 // 3600, "d", "h")


def _two_units(big: int, small: int, big_unit: str, small_unit: str) -> str:
    return f"{big} {big_unit}" + (f" {small} {small_unit}" if small else "")


def size(n_bytes: int | None) -> str:
    """1.2 KiB, 34 MiB: binary units, as ``free`` and ``ps`` count."""
    if n_bytes is None:
        return "n/a"
    if n_bytes < 1024:
        return f"{n_bytes} bytes"
    value = n_bytes / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def when(value: datetime | str | None, *, seconds: bool = True) -> str:
    """A moment in UTC as operators write it: 2030-01-07 11:42:05 UTC (no T, no offset, no micros)."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")
