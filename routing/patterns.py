"""Intent patterns: RE2 regular expressions, compiled as matching uses them.

Patterns come from operators and queries from anyone, so matching uses RE2 (linear time in the
query's length, no catastrophic backtracking).
"""

from __future__ import annotations

from typing import Any

import re2

PATTERN_MAX_CHARS = 4000
_RE2_MAX_MEM = 8 << 20


class PatternError(ValueError):
    """An intent pattern RE2 refuses; the message says why."""


def compile_pattern(pattern: str) -> Any:
    """Compile an intent pattern as matching uses it (case-insensitive RE2), or raise PatternError."""
    if not pattern or not pattern.strip():
        raise PatternError("The pattern is empty.")
    if len(pattern) > PATTERN_MAX_CHARS:
        raise PatternError(f"The pattern is longer than {PATTERN_MAX_CHARS} characters.")
    options = re2.Options()
    options.case_sensitive = False
    options.max_mem = _RE2_MAX_MEM
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        raise PatternError(f"Not a valid RE2 regular expression: {exc}") from None
