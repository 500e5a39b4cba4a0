"""Figures written for people: what gateway_stats and check_claude print."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from core import humanize
from tests.support.factories import JobFactory


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("0.0329750000000000"), "$0.033"),
        ("0.530000", "$0.53"),
        (0.00017, "$0.00017"),
        (Decimal("1234.5"), "$1,234.50"),
        (0, "$0.00"),
        ("0.010000", "$0.01"),
        (0.1, "$0.10"),
        (-0.5, "-$0.50"),
        (None, "n/a"),
    ],
)
def test_money_has_the_decimals_its_size_needs(amount, text):
    assert humanize.usd(amount) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.07, "0.07 s"),
        (1.234, "1.2 s"),
        (45.4, "45 s"),
        (125, "2 min 5 s"),
        (3600, "1 h"),
        (3780, "1 h 3 min"),
        (90000, "1 d 1 h"),
        (None, "n/a"),
    ],
)
def test_durations_read_as_people_say_them(seconds, text):
    assert humanize.duration(seconds) == text


def test_sizes_and_moments():
    assert [humanize.size(n) for n in (300, 1234, 5 * 2**20, 3 * 2**30)] == [
        "300 bytes",
        "1.2 KiB",
        "5.0 MiB",
        "3.0 GiB",
    ]
    moment = datetime(2030, 1, 7, 11, 42, 5, 123456, tzinfo=UTC)
    assert humanize.when(moment) == humanize.when("2030-01-07T11:42:05.123456Z") == "2030-01-07 11:42:05 UTC"
    assert humanize.when(moment, seconds=False) == "2030-01-07 11:42 UTC"


@pytest.mark.django_db
def test_gateway_stats_prints_money_sizes_and_times_for_people(redis_db):
    # Sums of the CLI's six-decimal costs come back from the database with many more digits.
    for cost in ("0.012500", "0.020475"):
        JobFactory(finished_at=timezone.now(), cost_usd=Decimal(cost))
    out = io.StringIO()
    call_command("gateway_stats", stdout=out)
    text = out.getvalue()
    day = timezone.now().astimezone(UTC).date().isoformat()
    assert f"  {day}      $0.033  (2 jobs)" in text, text
    assert "$0.00  (0 jobs)" in text
    assert "0.0329" not in text and "0.03297" not in text
    assert re.fullmatch(r"Claude gateway, \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", text.splitlines()[0])
    assert "Cache: 0 answers, about 0 bytes" in text
