"""API key authentication: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""

from __future__ import annotations

import hmac
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from queries.models import ApiKey

# Writing last_used_at on every call would put a database write on the hot path.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def presented_key(request: Request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise exceptions.AuthenticationFailed("Authorization must be 'Bearer <key>'.")
        return value.strip()
    value = request.META.get("HTTP_X_API_KEY", "").strip()
    return value or None


def api_key_lookup(key: str) -> ApiKey | None:
    """The active key whose hash matches, compared in constant time."""
    digest = ApiKey.hash_key(key)
    api_key = ApiKey.objects.filter(key_hash=digest).first()
    if api_key is None or not hmac.compare_digest(api_key.key_hash, digest) or not api_key.is_active:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """Sets ``request.auth`` to the caller's ApiKey. ``request.user`` stays None: keys are not users."""

    def authenticate(self, request: Request) -> tuple[None, ApiKey] | None:
        key = presented_key(request)
        if key is None:
            return None
        api_key = api_key_lookup(key)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return (None, api_key)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class HasApiKey(permissions.BasePermission):
    """A valid key is required unless GATEWAY_REQUIRE_AUTH is off (local development)."""

    message = "An API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."

    def has_permission(self, request: Request, view: object) -> bool:
        return request.auth is not None or not settings.GATEWAY_REQUIRE_AUTH
