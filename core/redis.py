from __future__ import annotations

from django_redis import get_redis_connection
from redis import Redis


def redis_client() -> Redis:
    """The process's shared Redis client (django-redis keeps one connection pool per process).

    Keys written through it are exactly as named (``claude:{hash}``, ``dedup:{hash}``): operators look
    them up by name, so they bypass the Django cache's key prefixing.
    """
    return get_redis_connection("default")
