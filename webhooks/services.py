"""Webhooks: URL safety checks and delivery of outcomes to callers."""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from django.conf import settings

from queries.models import Job, QueryRequest

WEBHOOK_URL_MAX_CHARS = 2048
# Spellings of IPv4 that resolvers accept but people do not read as an address: 2130706433, 0x7f.1, 017.0.0.1.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


class UnsafeWebhookUrl(ValueError):
    """The URL may not receive webhooks; the message says why."""


def address_is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return address_is_public(mapped)
    return address.is_global and not address.is_multicast


def webhook_url_check(url: str, *, allow_private: bool | None = None, resolve: bool = True) -> None:
    """Raise UnsafeWebhookUrl unless ``url`` is an http(s) URL whose host is a public address.

    Private, loopback, link-local, CGNAT, unspecified and multicast targets are refused (SSRF), unless
    WEBHOOK_ALLOW_PRIVATE is on. Names are resolved and every address they resolve to must be public.
    """
    if allow_private is None:
        allow_private = settings.WEBHOOK_ALLOW_PRIVATE
    if len(url) > WEBHOOK_URL_MAX_CHARS:
        raise UnsafeWebhookUrl(f"must be at most {WEBHOOK_URL_MAX_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise UnsafeWebhookUrl("must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeWebhookUrl(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeWebhookUrl("must use http or https")
    if "@" in parts.netloc:
        raise UnsafeWebhookUrl("must not contain credentials (user@host)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeWebhookUrl("must name a host")
    if port == 0:
        raise UnsafeWebhookUrl("must not use port 0")
    if allow_private:
        return
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if not address_is_public(literal):
            raise UnsafeWebhookUrl(f"points to a non-public address ({literal})")
        return
    if _NUMERIC_HOST.match(host):
        raise UnsafeWebhookUrl("uses a numeric host spelling that is not a plain IP address")
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        raise UnsafeWebhookUrl("points to localhost")
    if not resolve:
        return
    try:
        infos = socket.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeWebhookUrl(f"host {host!r} does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not address_is_public(address):
            raise UnsafeWebhookUrl(f"host {host!r} resolves to a non-public address ({address})")


def webhook_on_request(*, request: QueryRequest) -> None:
    """Called when a joined or cache-answered request is recorded (its outcome may be known already)."""


def webhook_on_job_finished(*, job: Job) -> None:
    """Called once when a job reaches a final state (completed, failed, cancelled)."""
