"""Who is calling a /v1/ endpoint: our API keys, as ``x-api-key`` or ``Authorization: Bearer``."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest
from rest_framework.exceptions import AuthenticationFailed

from compat.errors import ApiError
from queries.auth import api_key_lookup, presented_key
from queries.models import ApiKey


def caller_key(request: HttpRequest) -> ApiKey | None:
    """The caller's active key; None for an anonymous caller when GATEWAY_REQUIRE_AUTH is off.

    Raises a 401 ApiError for a missing (when required), malformed, unknown, revoked or expired key.
    """
    try:
        key = presented_key(request)
    except AuthenticationFailed as exc:
        raise ApiError(401, str(exc.detail)) from None
    if key is None:
        if settings.GATEWAY_REQUIRE_AUTH:
            raise ApiError(401, "x-api-key header is required (or Authorization: Bearer <key>)")
        return None
    api_key = api_key_lookup(key)
    if api_key is None:
        raise ApiError(401, "invalid x-api-key: an invalid, revoked or expired API key")
    return api_key
