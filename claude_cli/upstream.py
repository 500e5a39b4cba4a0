"""Upstream failures as the CLI reports them, sorted into the kinds the gateway reacts to.

With ``--output-format stream-json --verbose`` the CLI prints a line for every upstream request
that failed and that it is about to retry (claude 2.1.197)::

    {"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"retry_delay_ms":601.2,
     "error_status":401,"error":"authentication_failed",...}

``error_status`` is the HTTP status (null for a connection error, with ``"error": "unknown"``);
``error`` is the CLI's name for it (``authentication_failed``, ``rate_limit``, ``overloaded``,
``server_error``). An upstream 401 is retried this way without end; a 403 ends the run with a
result whose ``api_error_status`` is 403. A usage limit with a reset time comes as a
``rate_limit_event`` line (``rate_limit_info.status: rejected``, ``resetsAt`` in epoch seconds),
from the upstream's ``anthropic-ratelimit-unified-*`` headers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

UpstreamKind = Literal["auth", "rate_limit", "overloaded", "network"]
UPSTREAM_KINDS: tuple[UpstreamKind, ...] = ("auth", "rate_limit", "overloaded", "network")

_AUTH_STATUSES = frozenset((401, 403))


@dataclass(frozen=True)
class UpstreamFailure:
    """One failed upstream request: its kind, HTTP status (None for a connection error), the CLI's
    name for the error, when a rate or usage limit resets (epoch seconds) if it said so, and the
    seconds the CLI will wait before its retry (it honours the upstream's ``retry-after``)."""

    kind: UpstreamKind
    status: int | None
    error: str
    reset_at: float | None = None
    retry_in: float | None = None

    def describe(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no HTTP response"
        what = {
            "auth": "not authorised: the upstream refused the credentials",
            "rate_limit": "rate or usage limit reached",
            "overloaded": "the upstream is overloaded or failing",
            "network": "the upstream could not be reached",
        }[self.kind]
        text = f"{what} ({status}, {self.error})" if self.error else f"{what} ({status})"
        if self.reset_at is not None:
            text += f"; resets at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.reset_at))}"
        return text


def kind_for(status: int | None, error: str = "") -> UpstreamKind | None:
    """The kind of an upstream failure from its HTTP status (None: no response at all)."""
    if status is None:
        return "network"
    if status in _AUTH_STATUSES:
        return "auth"
    if status == 429:
        return "rate_limit"
    if status == 529 or status >= 500:
        return "overloaded"
    return None


def from_retry(obj: dict[str, Any], reset_at: float | None = None) -> UpstreamFailure | None:
    """The failure an ``api_retry`` line reports, or None if it is not one the gateway sorts."""
    raw_status = obj.get("error_status")
    status = raw_status if isinstance(raw_status, int) and not isinstance(raw_status, bool) else None
    if raw_status is not None and status is None:
        return None
    error = obj.get("error")
    error = error if isinstance(error, str) else ""
    kind = kind_for(status, error)
    if kind is None:
        return None
    delay = obj.get("retry_delay_ms")
    retry_in = delay / 1000 if isinstance(delay, int | float) and not isinstance(delay, bool) else None
    return UpstreamFailure(kind, status, error, reset_at if kind == "rate_limit" else None, retry_in)


def from_result(data: dict[str, Any] | None, reset_at: float | None = None) -> UpstreamFailure | None:
    """The failure a ``result`` object reports through ``api_error_status``, if any."""
    if not data or not data.get("is_error"):
        return None
    status = data.get("api_error_status")
    if not isinstance(status, int) or isinstance(status, bool):
        return None
    kind = kind_for(status)
    if kind is None:
        return None
    text = data.get("result")
    error = text[:200] if isinstance(text, str) else ""
    return UpstreamFailure(kind, status, error, reset_at if kind == "rate_limit" else None)


def limit_reset(obj: dict[str, Any]) -> float | None:
    """The reset time (epoch seconds) of a ``rate_limit_event`` that says the limit was hit."""
    info = obj.get("rate_limit_info")
    if not isinstance(info, dict) or info.get("status") != "rejected":
        return None
    resets_at = info.get("resetsAt")
    if isinstance(resets_at, int | float) and not isinstance(resets_at, bool) and resets_at > 0:
        return float(resets_at)
    return None
