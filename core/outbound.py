"""The one way out: URL safety (SSRF) and the HTTP POST itself, for webhooks and anything else.

Every outbound request goes through ``post``. It resolves the host once, refuses non-public addresses
(unless WEBHOOK_ALLOW_PRIVATE; link-local and cloud metadata addresses always), and connects to the
address it checked, so a name that resolves to a
public address at the check and to a private one a moment later (DNS rebinding) cannot redirect it.
The Host header and, for https, the SNI name and certificate check still use the URL's host name.
Redirects are never followed; at most ``max_bytes`` of the response are read; ``timeout`` bounds the
whole exchange, not each socket read.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import time
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings

URL_MAX_CHARS = 2048
RESPONSE_MAX_BYTES = 64 * 1024
USER_AGENT = "claude-gateway-webhooks/1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Spellings of IPv4 that resolvers accept but people do not read as an address: 2130706433, 0x7f.1, 017.0.0.1.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$", re.IGNORECASE)
# IPv6 prefixes that carry an IPv4 address the packet may end up at: IPv4-compatible (deprecated) and
# the NAT64 well-known prefix. IPv4-mapped and 6to4 are handled by ipaddress itself.
_EMBEDS_IPV4 = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("64:ff9b::/96"))
# Refused even with WEBHOOK_ALLOW_PRIVATE: a local receiver never lives there, and the instance
# metadata services there hand out the machine's cloud credentials. Link-local covers AWS, GCP,
# Azure, OCI and DigitalOcean (169.254.169.254), ECS task credentials (169.254.170.2) and Azure's
# IMDS; the rest are metadata services outside it.
_ALWAYS_REFUSED = (
    ipaddress.IPv4Network("169.254.0.0/16"),  # IPv4 link-local
    ipaddress.IPv6Network("fe80::/10"),  # IPv6 link-local
    ipaddress.IPv6Network("fd00:ec2::254/128"),  # AWS IMDS over IPv6
    ipaddress.IPv4Network("100.100.100.200/32"),  # Alibaba Cloud
    ipaddress.IPv4Network("192.0.0.192/32"),  # Oracle Cloud (classic)
    ipaddress.IPv4Network("168.63.129.16/32"),  # Azure WireServer (a public address)
)
# Names of metadata services, refused before any lookup (they resolve to the addresses above inside
# their clouds, and nowhere else).
_METADATA_NAMES = frozenset(
    ("metadata.google.internal", "metadata.goog", "instance-data.ec2.internal", "metadata.azure.internal")
)


class UnsafeUrl(ValueError):
    """The URL may not be called; the message says why."""


class HostDoesNotResolve(UnsafeUrl):
    """The host name has no address right now: refused at submit, retried at send."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str


def address_is_public(address: IPAddress) -> bool:
    """True for a globally routable unicast address; anything that can reach a private network is not."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and any(address in net for net in _EMBEDS_IPV4):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_is_public(embedded)
    return address.is_global and not address.is_multicast


def address_is_metadata(address: IPAddress) -> bool:
    """True for a link-local or cloud metadata address, also when written inside an IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and any(address in net for net in _EMBEDS_IPV4):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and address_is_metadata(embedded):
            return True
    return any(address.version == net.version and address in net for net in _ALWAYS_REFUSED)


def url_target(url: str) -> Target:
    """Parse an outbound URL, refusing what is malformed or ambiguous (no DNS, no address policy)."""
    if len(url) > URL_MAX_CHARS:
        raise UnsafeUrl(f"must be at most {URL_MAX_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UnsafeUrl("must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("must use http or https")
    # user@host: the part before @ is what a reader takes for the host, the part after is where the
    # request goes. A backslash is read as a path separator by some parsers and not by others.
    if "@" in parts.netloc or "\\" in url:
        raise UnsafeUrl("must not contain credentials (user@host) or backslashes")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeUrl("must name a host")
    if "%" in host:
        raise UnsafeUrl("must not percent-encode the host or give an IPv6 zone")
    if port == 0:
        raise UnsafeUrl("must not use port 0")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(
        scheme=parts.scheme, host=host, port=port or (443 if parts.scheme == "https" else 80), path=path
    )


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def metadata_host_check(host: str) -> None:
    """Refuse a link-local or metadata address, or a metadata service's name, whatever the settings."""
    literal = literal_address(host)
    if literal is not None and address_is_metadata(literal):
        raise UnsafeUrl(f"points to a link-local or cloud metadata address ({literal})")
    if host.lower() in _METADATA_NAMES:
        raise UnsafeUrl("points to a cloud metadata service")


def host_check(host: str) -> None:
    """Refuse host spellings that name a private target without DNS: literals, numeric forms, localhost."""
    metadata_host_check(host)
    literal = literal_address(host)
    if literal is not None:
        if not address_is_public(literal):
            raise UnsafeUrl(f"points to a non-public address ({literal})")
        return
    if _NUMERIC_HOST.match(host):
        raise UnsafeUrl("uses a numeric host spelling that is not a plain IP address")
    lowered = host.lower()
    if lowered == "localhost" or lowered.endswith(".localhost"):
        raise UnsafeUrl("points to localhost")


def resolve_addresses(host: str, port: int) -> list[IPAddress]:
    """The host's addresses, in the resolver's order (the DNS seam: tests replace it to rebind names)."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise HostDoesNotResolve(f"host {host!r} does not resolve") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise HostDoesNotResolve(f"host {host!r} does not resolve")
    return addresses


def checked_addresses(target: Target, *, allow_private: bool) -> list[IPAddress]:
    """Resolve the target's host; every address must be public unless private ones are allowed, and
    none may be link-local or a cloud metadata address either way."""
    if allow_private:
        metadata_host_check(target.host)
    else:
        host_check(target.host)
    addresses = resolve_addresses(target.host, target.port)
    for address in addresses:
        if address_is_metadata(address):
            raise UnsafeUrl(
                f"host {target.host!r} resolves to a link-local or cloud metadata address ({address})"
            )
        if not allow_private and not address_is_public(address):
            raise UnsafeUrl(f"host {target.host!r} resolves to a non-public address ({address})")
    return addresses


def url_check(url: str, *, allow_private: bool | None = None, resolve: bool = True) -> None:
    """Raise UnsafeUrl unless ``url`` is an http(s) URL whose host is a public address.

    Loopback, private, CGNAT, unspecified, multicast and IPv4-in-IPv6 targets are refused, as are
    numeric IPv4 spellings and user@host, unless WEBHOOK_ALLOW_PRIVATE is on. Link-local and cloud
    metadata addresses (169.254.169.254, fd00:ec2::254, 100.100.100.200, ...) are refused even then.
    Names are resolved and every address must pass; with WEBHOOK_ALLOW_PRIVATE a name that does not
    resolve yet is let through (the send checks again). ``post`` checks again and connects to the
    address it checked.
    """
    if allow_private is None:
        allow_private = settings.WEBHOOK_ALLOW_PRIVATE
    target = url_target(url)
    if allow_private:
        metadata_host_check(target.host)
    else:
        host_check(target.host)
    if resolve:
        try:
            checked_addresses(target, allow_private=allow_private)
        except HostDoesNotResolve:
            if not allow_private:
                raise


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """Verifies receivers' certificates against certifi's CA bundle (what requests would use)."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Speaks HTTP for ``host`` but connects to an address chosen (and checked) beforehand."""

    def __init__(self, host: str, port: int, *, address: IPAddress, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.pinned_address = str(address)

    def connect(self) -> None:
        self.sock = socket.create_connection((self.pinned_address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, address: IPAddress, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self.pinned_address = str(address)
        self.tls_context = context

    def connect(self) -> None:
        sock = socket.create_connection((self.pinned_address, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # SNI and the certificate check use the URL's host name, not the address we dialled.
        self.sock = self.tls_context.wrap_socket(sock, server_hostname=self.host)


@dataclass(frozen=True)
class HttpResult:
    """What one POST came to. ``status`` is None when no response arrived (see ``error``)."""

    status: int | None
    body: bytes = b""
    retry_after: str | None = None
    location: str | None = None
    address: str = ""
    error: str = ""
    # The URL itself is refused (SSRF policy): trying again cannot help.
    refused: bool = False
    duration_ms: int = 0


def post(
    *,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    allow_private: bool,
    max_bytes: int = RESPONSE_MAX_BYTES,
) -> HttpResult:
    """POST ``body`` to ``url`` under the SSRF policy. Never raises for network trouble: see the result."""
    started = time.monotonic()
    deadline = started + timeout

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        target = url_target(url)
        addresses = checked_addresses(target, allow_private=allow_private)
    except HostDoesNotResolve as exc:
        return HttpResult(status=None, error=str(exc), duration_ms=elapsed_ms())
    except UnsafeUrl as exc:
        return HttpResult(
            status=None, error=f"refused: the URL {exc}", refused=True, duration_ms=elapsed_ms()
        )

    send_headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Accept-Encoding": "identity",
        "Connection": "close",
        **headers,
    }
    last_error = "no address to connect to"
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return HttpResult(status=None, address=str(address), error="timed out", duration_ms=elapsed_ms())
        conn: http.client.HTTPConnection
        if target.scheme == "https":
            conn = _PinnedHTTPSConnection(
                target.host, target.port, address=address, timeout=remaining, context=tls_context()
            )
        else:
            conn = _PinnedHTTPConnection(target.host, target.port, address=address, timeout=remaining)
        try:
            try:
                conn.connect()
            except TimeoutError:
                return HttpResult(
                    status=None, address=str(address), error="timed out connecting", duration_ms=elapsed_ms()
                )
            except ssl.SSLError as exc:
                return HttpResult(
                    status=None, address=str(address), error=f"TLS: {exc}", duration_ms=elapsed_ms()
                )
            except OSError as exc:
                # Try the host's next address (an unreachable IPv6 before a working IPv4, say).
                last_error = f"could not connect: {exc}"
                continue
            return _exchange(conn, target, address, body, send_headers, deadline, max_bytes, started)
        finally:
            conn.close()
    return HttpResult(status=None, address=str(addresses[-1]), error=last_error, duration_ms=elapsed_ms())


def _exchange(
    conn: http.client.HTTPConnection,
    target: Target,
    address: IPAddress,
    body: bytes,
    headers: dict[str, str],
    deadline: float,
    max_bytes: int,
    started: float,
) -> HttpResult:
    # Held here because http.client drops conn.sock once a "Connection: close" response arrives,
    # while the response goes on reading from the same socket.
    sock = conn.sock
    assert sock is not None

    def set_remaining() -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        set_remaining()
        conn.request("POST", target.path, body=body, headers=headers)
        set_remaining()
        response = conn.getresponse()
    except TimeoutError:
        return HttpResult(status=None, address=str(address), error="timed out", duration_ms=elapsed_ms())
    except (OSError, http.client.HTTPException) as exc:
        message = str(exc) or type(exc).__name__
        return HttpResult(status=None, address=str(address), error=message[:500], duration_ms=elapsed_ms())

    # The status decides the outcome; the body is only an excerpt for operators, so a body that is
    # slow, cut short or too long leaves the status standing.
    data = bytearray()
    error = ""
    try:
        while len(data) < max_bytes:
            set_remaining()
            chunk = response.read1(min(16384, max_bytes - len(data)))
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        error = "timed out reading the response body"
    except (OSError, http.client.HTTPException) as exc:
        error = f"reading the response body: {exc or type(exc).__name__}"[:500]
    return HttpResult(
        status=response.status,
        body=bytes(data),
        retry_after=response.getheader("Retry-After"),
        location=response.getheader("Location"),
        address=str(address),
        error=error,
        duration_ms=elapsed_ms(),
    )
