"""Intent patterns: RE2 regular expressions, compiled as matching uses them.

Patterns come from operators and queries from anyone, so matching uses RE2 (linear time in the
query's length, no catastrophic backtracking). A rule's pattern, and its exclusions, are written one
alternative per line: a query matches when any line matches, and each line can be shown on its own
as the reason a query matched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import re2

PATTERN_MAX_CHARS = 4000
_RE2_MAX_MEM = 8 << 20


class PatternError(ValueError):
    """An intent pattern RE2 refuses; the message says why."""


@dataclass(frozen=True)
class LineMatch:
    """One line of a pattern and the text of the query it matched."""

    pattern: str
    text: str


def pattern_lines(pattern: str) -> list[str]:
    """The alternatives of a pattern: its non-blank lines, without surrounding whitespace."""
    return [line.strip() for line in pattern.splitlines() if line.strip()]


def _compile_one(pattern: str) -> Any:
    options = re2.Options()
    options.case_sensitive = False
    options.max_mem = _RE2_MAX_MEM
    options.log_errors = False
    return re2.compile(pattern, options)


def compile_pattern(pattern: str) -> Any:
    """Compile a pattern as matching uses it (case-insensitive RE2, any line), or raise PatternError."""
    if len(pattern) > PATTERN_MAX_CHARS:
        raise PatternError(f"The pattern is longer than {PATTERN_MAX_CHARS} characters.")
    lines = pattern_lines(pattern)
    if not lines:
        raise PatternError("The pattern is empty.")
    for number, line in enumerate(lines, start=1):
        try:
            _compile_one(line)
        except re2.error as exc:
            where = f"line {number} ({line[:60]}): " if len(lines) > 1 else ""
            raise PatternError(f"Not a valid RE2 regular expression: {where}{exc}") from None
    return _compile_one(lines[0] if len(lines) == 1 else "|".join(f"(?:{line})" for line in lines))


def compile_exclusions(exclusions: str) -> Any | None:
    """Compile a rule's exclusions (blank: none), or raise PatternError."""
    return compile_pattern(exclusions) if pattern_lines(exclusions) else None


def mask(regex: Any | None, query: str) -> str:
    """The query with what ``regex`` matches blanked out, so it cannot count as evidence.

    Blanks keep every other character where it was, so spans in the result are spans in the query.
    """
    if regex is None:
        return query
    return str(regex.sub(lambda match: " " * len(match.group()), query))


def first_line_match(pattern: str, text: str, shown: str | None = None) -> LineMatch | None:
    """Which line of ``pattern`` decides a match in ``text``, and what it matched.

    The compiled alternation takes the leftmost match, and at that position the first line that
    matches; this finds the same line by searching each line alone. The matched text is taken from
    ``shown`` (the query before masking) when given.
    """
    best: tuple[int, int, int, str] | None = None
    for index, line in enumerate(pattern_lines(pattern)):
        match = _compile_one(line).search(text)
        if match is not None and (best is None or (match.start(), index) < best[:2]):
            best = (match.start(), index, match.end(), line)
    if best is None:
        return None
    start, _, end, line = best
    # Lines without lookbehind match a delimiter before what they look for: show only the text.
    return LineMatch(pattern=line, text=(text if shown is None else shown)[start:end].strip())


def line_matches(pattern: str, text: str) -> list[LineMatch]:
    """Every line of ``pattern`` that matches ``text``, with each of its matches."""
    found = []
    for line in pattern_lines(pattern):
        for match in _compile_one(line).finditer(text):
            if match.group().strip():
                found.append(LineMatch(pattern=line, text=match.group().strip()))
    return found
