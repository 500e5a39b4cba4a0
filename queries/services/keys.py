"""API keys: created with the plaintext shown once, revoked without losing their history."""

from __future__ import annotations

import secrets
from typing import Any

from queries.auth import api_keys_changed
from queries.models import ApiKey


def api_key_create(*, name: str, limits: dict[str, Any] | None = None) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plaintext key, which is stored nowhere and shown once.

    ``limits`` sets ApiKey's limit fields (expires_at, rate_limit_per_minute, ...); a bad value raises
    django.core.exceptions.ValidationError.
    """
    name = name.strip()
    if not name:
        raise ValueError("An API key needs a name.")
    key = ApiKey.PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey(name=name[:100], prefix=key[:12], key_hash=ApiKey.hash_key(key), **(limits or {}))
    api_key.full_clean(exclude=["key_hash"])
    api_key.save()
    return api_key, key


def api_key_revoke(*, api_key: ApiKey) -> bool:
    """Refuse the key from now on (401); False if it was already revoked. The row and its history stay."""
    revoked = bool(ApiKey.objects.filter(pk=api_key.pk, is_active=True).update(is_active=False))
    api_keys_changed()  # update() sends no signal: tell every process's key cache
    return revoked
