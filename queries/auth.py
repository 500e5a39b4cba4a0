"""API key authentication: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""

from __future__ import annotations

import hmac
import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db.models.signals import post_delete, post_save
from django.http import HttpRequest
from django.utils import timezone
from redis.exceptions import RedisError
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from core.redis import redis_bytes, redis_client
from queries.models import ApiKey

logger = logging.getLogger(__name__)
# Writing last_used_at on every call would put a database write on the hot path.
LAST_USED_RESOLUTION = timedelta(seconds=60)
# Real keys are 47 characters; anything far longer is not worth hashing.
KEY_MAX_CHARS = 200
# Bumped whenever a key changes (saved, deleted, revoked), so every process drops the keys it holds.
KEYS_VERSION_KEY = "apikeys:version"
_CACHED_KEYS_MAX = 10_000

# Every request looks its key up; keys rarely change. Each process keeps the rows it found for up to
# API_KEY_CACHE_SECONDS, checked against KEYS_VERSION_KEY on every use: a Redis GET instead of a
# database round trip, and a revoked key is refused by every process at once. Only keys that exist
# are kept, so unknown keys cannot fill the memory.
_cached_keys: dict[str, tuple[float, bytes | None, ApiKey]] = {}


def api_keys_changed(**kwargs: object) -> None:
    """Make every process read keys from the database again (called when any key changes)."""
    _cached_keys.clear()
    try:
        redis_client().incr(KEYS_VERSION_KEY)
    except RedisError:
        logger.warning(
            "could not announce an API key change; other processes see it within %s s",
            settings.API_KEY_CACHE_SECONDS,
        )


post_save.connect(api_keys_changed, sender=ApiKey, dispatch_uid="auth-api-key-saved")
post_delete.connect(api_keys_changed, sender=ApiKey, dispatch_uid="auth-api-key-deleted")


def _api_key_by_hash(digest: str, *, deferred_check: bool = False) -> tuple[ApiKey | None, bytes | None]:
    """The key with this hash and the keys version it is known good for.

    With ``deferred_check`` a key this process holds is returned without reading the version: the
    caller must check it against KEYS_VERSION_KEY before acting on the key (the cache-hit path does
    so in the same Redis script that answers, queries/journal.py).
    """
    ttl = settings.API_KEY_CACHE_SECONDS
    if ttl <= 0:
        return ApiKey.objects.filter(key_hash=digest).first(), None
    now = time.monotonic()
    held = _cached_keys.get(digest)
    if deferred_check and held is not None and held[0] > now:
        return held[2], held[1]
    try:
        # b"0" until the first change: the cache-hit script compares versions as strings.
        version = redis_bytes(redis_client().get(KEYS_VERSION_KEY)) or b"0"
    except RedisError:
        return ApiKey.objects.filter(key_hash=digest).first(), None
    if held is not None and held[0] > now and held[1] == version:
        return held[2], version
    api_key = ApiKey.objects.filter(key_hash=digest).first()
    if api_key is not None:
        if len(_cached_keys) >= _CACHED_KEYS_MAX:
            _cached_keys.clear()
        _cached_keys[digest] = (now + ttl, version, api_key)
    return api_key, version


def presented_key(request: HttpRequest | Request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise exceptions.AuthenticationFailed("Authorization must be 'Bearer <key>'.")
        return value.strip()
    value = request.META.get("HTTP_X_API_KEY", "").strip()
    return value or None


def api_key_lookup(key: str) -> ApiKey | None:
    """The active, unexpired key whose hash matches, compared in constant time."""
    return api_key_lookup_deferred(key, deferred_check=False)[0]


def api_key_lookup_deferred(key: str, *, deferred_check: bool = True) -> tuple[ApiKey | None, bytes | None]:
    """api_key_lookup, and the keys version the caller must find unchanged (see _api_key_by_hash)."""
    if len(key) > KEY_MAX_CHARS:
        return None, None
    digest = ApiKey.hash_key(key)
    api_key, version = _api_key_by_hash(digest, deferred_check=deferred_check)
    if api_key is None or not hmac.compare_digest(api_key.key_hash, digest):
        return None, None
    if not api_key.is_active or api_key.is_expired:
        return None, None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key, version


def api_key_held(key: str) -> tuple[ApiKey, bytes | None] | None:
    """api_key_lookup_deferred's answer when it needs neither Redis nor the database: a valid key this
    process holds, whose last_used_at is recent enough not to be written. None otherwise (then call
    api_key_lookup_deferred, which may do either), whether the key is valid or not."""
    if len(key) > KEY_MAX_CHARS or settings.API_KEY_CACHE_SECONDS <= 0:
        return None
    digest = ApiKey.hash_key(key)
    held = _cached_keys.get(digest)
    if held is None or held[0] <= time.monotonic():
        return None
    expires, version, api_key = held
    if not hmac.compare_digest(api_key.key_hash, digest) or not api_key.is_active or api_key.is_expired:
        return None
    if api_key.last_used_at is None or timezone.now() - api_key.last_used_at > LAST_USED_RESOLUTION:
        return None
    return api_key, version


def api_keys_forget() -> None:
    """Drop the keys this process holds (the cache-hit path found the keys version moved on)."""
    _cached_keys.clear()


def request_api_key(request: Request) -> ApiKey | None:
    """The caller's key, as ApiKeyAuthentication set it (None: anonymous, with GATEWAY_REQUIRE_AUTH off)."""
    return request.auth if isinstance(request.auth, ApiKey) else None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """Sets ``request.auth`` to the caller's ApiKey. ``request.user`` stays None: keys are not users."""

    def authenticate(self, request: Request) -> tuple[None, ApiKey] | None:
        key = presented_key(request)
        if key is None:
            return None
        api_key = api_key_lookup(key)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.")
        return (None, api_key)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class HasApiKey(permissions.BasePermission):
    """A valid key is required unless GATEWAY_REQUIRE_AUTH is off (local development)."""

    message = "An API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."

    def has_permission(self, request: Request, view: object) -> bool:
        return request.auth is not None or not settings.GATEWAY_REQUIRE_AUTH


def cache_scope(*, api_key: ApiKey | None) -> str | None:
    """What cached answers and in-flight jobs are shared within (CACHE_SCOPE); None means everyone.

    With ``key`` scope a key's cache entries and dedup marks are its own: MCP tools may read data that
    differs per tenant, and a shared answer would also tell one tenant what another asked.
    """
    if settings.CACHE_SCOPE == "key" and api_key is not None:
        return f"key:{api_key.pk}"
    return None
