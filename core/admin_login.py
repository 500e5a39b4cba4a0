"""Admin login attempts, limited per client address and per username.

Failed logins are counted in Redis (``adminlogin:ip:{address}``, ``adminlogin:user:{sha256}``) for
ADMIN_LOGIN_LOCKOUT_SECONDS from the first failure; at ADMIN_LOGIN_MAX_FAILURES further attempts
from that address or for that username are answered 429 until the window ends, before the password
is even checked. A successful login clears its username's count. If Redis is down, logins proceed:
locking operators out of the admin during an incident would be worse.

The address is REMOTE_ADDR, the peer gunicorn saw; behind a proxy every client shares the proxy's
address, and the per-username count still holds.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.urls import NoReverseMatch, reverse
from django.utils.html import escape
from redis.exceptions import RedisError

from core.redis import redis_client

logger = logging.getLogger(__name__)

IP_KEY = "adminlogin:ip:{}"
USER_KEY = "adminlogin:user:{}"

_RECORD_SCRIPT = """
for i = 1, #KEYS do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], tonumber(ARGV[1])) end
end
return 1
"""


def _login_path() -> str | None:
    try:
        return reverse("admin:login")
    except NoReverseMatch:
        return None


def _keys(request: HttpRequest, username: str) -> list[str]:
    keys = [IP_KEY.format(request.META.get("REMOTE_ADDR") or "unknown")]
    if username:
        keys.append(USER_KEY.format(hashlib.sha256(username.strip().lower().encode()).hexdigest()))
    return keys


def admin_login_lockout(*, request: HttpRequest, username: str) -> int:
    """Seconds until this address and username may try again; 0 when they may now."""
    redis = redis_client()
    keys = _keys(request, username)
    try:
        counts = redis.mget(keys)
        locked = [key for key, count in zip(keys, counts, strict=True) if int(count or 0) >= _max()]
        return max((redis.ttl(key) for key in locked), default=0) if locked else 0
    except RedisError:
        logger.warning("admin login limiter unavailable; not limiting", exc_info=True)
        return 0


def admin_login_failure_record(*, request: HttpRequest, username: str) -> None:
    keys = _keys(request, username)
    try:
        redis_client().eval(_RECORD_SCRIPT, len(keys), *keys, settings.ADMIN_LOGIN_LOCKOUT_SECONDS)
    except RedisError:
        logger.warning("admin login limiter unavailable; failure not counted", exc_info=True)


def _max() -> int:
    return settings.ADMIN_LOGIN_MAX_FAILURES


@receiver(user_login_failed)
def _on_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
):
    if request is not None and request.path == _login_path():
        admin_login_failure_record(request=request, username=str(credentials.get("username") or ""))
        logger.warning("admin login failed from %s", request.META.get("REMOTE_ADDR"))


@receiver(user_logged_in)
def _on_logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if request is None:
        return
    try:
        redis_client().delete(_keys(request, user.get_username())[1])
    except RedisError:
        logger.warning("admin login limiter unavailable; count not cleared", exc_info=True)


class AdminLoginThrottleMiddleware:
    """Answers 429 to a login POST from a locked-out address or for a locked-out username."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "POST" and request.path == _login_path():
            wait = admin_login_lockout(request=request, username=request.POST.get("username", ""))
            if wait > 0:
                minutes = max(1, round(wait / 60))
                body = (
                    "<!doctype html><title>Too many login attempts</title>"
                    f"<h1>Too many failed login attempts</h1><p>Try again in {escape(minutes)} minute(s).</p>"
                )
                return HttpResponse(body, status=429, headers={"Retry-After": str(wait)})
        return self.get_response(request)
