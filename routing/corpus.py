"""Labelled queries to check the intent rules against: how many route as labelled, and where the rest go.

A corpus is a JSON Lines file (one ``{"query": ..., "intent": ...}`` per line) or a CSV file with
``query`` and ``intent`` columns. Operators keep one of their own traffic and run ``manage.py route
--corpus FILE`` after editing rules.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from routing.services import GENERAL_INTENT, route_query


class CorpusError(ValueError):
    """A corpus file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class CorpusItem:
    query: str
    intent: str


@dataclass(frozen=True)
class CorpusMiss:
    query: str
    labelled: str
    routed: str


@dataclass
class CorpusReport:
    """How a corpus routed: per (labelled, routed) pair a count, and every query routed otherwise."""

    total: int = 0
    correct: int = 0
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    misses: list[CorpusMiss] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def general_to_server(self) -> list[CorpusMiss]:
        """General queries routed to another intent (its servers started, maybe its cache skipped)."""
        return [miss for miss in self.misses if miss.labelled == GENERAL_INTENT]

    @property
    def intents(self) -> list[str]:
        """Every intent seen, labelled or routed; general first, then by name."""
        names = {name for pair in self.confusion for name in pair}
        return sorted(names, key=lambda name: (name != GENERAL_INTENT, name))


def corpus_read(path: Path) -> list[CorpusItem]:
    """The labelled queries of a .jsonl or .csv file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CorpusError(f"{path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".csv":
        rows = [(number, row) for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2)]
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{number}: not JSON ({exc.msg}).") from None
    items = []
    for number, row in rows:
        query, intent = (row.get("query"), row.get("intent")) if isinstance(row, dict) else (None, None)
        if not isinstance(query, str) or not query.strip() or not isinstance(intent, str) or not intent:
            raise CorpusError(f'{path}:{number}: needs a "query" and an "intent".')
        items.append(CorpusItem(query=query, intent=intent.strip()))
    if not items:
        raise CorpusError(f"{path}: no labelled queries.")
    return items


def corpus_evaluate(*, items: list[CorpusItem]) -> CorpusReport:
    """Route every query as a submission would and compare with its label."""
    report = CorpusReport()
    for item in items:
        routed = route_query(query=item.query).intent
        report.total += 1
        report.confusion[(item.intent, routed)] += 1
        if routed == item.intent:
            report.correct += 1
        else:
            report.misses.append(CorpusMiss(query=item.query, labelled=item.intent, routed=routed))
    return report
