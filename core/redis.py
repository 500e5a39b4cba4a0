from __future__ import annotations

from typing import Any

from django_redis import get_redis_connection
from redis import Redis


def redis_client() -> Redis:
    """The process's shared Redis client (django-redis keeps one connection pool per process).

    Keys written through it are exactly as named (``claude:{hash}``, ``dedup:{hash}``): operators look
    them up by name, so they bypass the Django cache's key prefixing.
    """
    return get_redis_connection("default")


def redis_bytes(value: Any) -> bytes | None:
    """A reply as bytes (the client does not decode replies; its type hints allow str too)."""
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def redis_text(value: Any) -> str | None:
    """A reply as text, whether the client decoded it or not."""
    if value is None or isinstance(value, str):
        return value
    return value.decode() if isinstance(value, bytes) else str(value)
