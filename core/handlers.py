"""The WSGI entry point: one Django handler per kind of traffic, each with only the middleware it needs.

The API (``/api/``, ``/v1/``) and the probes (``/health``, ``/ready``, ``/metrics``) authenticate with
keys or not at all: sessions, CSRF, user authentication, messages, clickjacking headers and static
files do nothing for them but cost time on every request, and a cache hit is a few hundred
microseconds of work in all. Those requests go through ``API_MIDDLEWARE`` (``MIDDLEWARE`` without
``BROWSER_MIDDLEWARE``, in the same order); everything else, the admin above all, through the whole
``MIDDLEWARE``. Django's test client uses the whole chain, which holds the API chain's middleware
in the same order, so the API behaves the same either way.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.utils.module_loading import import_string

from core.db import connections_reset

FAST_PATH_TRIED = "gateway.fast_path_tried"
# Set on a request this handler runs again if it lost the database: views leave the retry to it.
DATABASE_RETRY = "gateway.database_retry"
DATABASE_ATTEMPTS = 3
# What a fast path on the event loop (settings.LOOP_FAST_PATHS, core.asgi) returns for a request it
# cannot answer without a blocking call: the path's FAST_PATHS function is asked on a thread instead.
ON_THREAD = object()


class MiddlewareList:
    """A Django handler (WSGI or ASGI) built from the given middleware list instead of
    settings.MIDDLEWARE."""

    def __init__(self, middleware: list[str]):
        self._middleware_setting = middleware
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler.load_middleware reads settings.MIDDLEWARE; this runs once, at start-up.
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = self._middleware_setting
        try:
            super().load_middleware(is_async)  # type: ignore[misc]
        finally:
            settings.MIDDLEWARE = full


class _Handler(MiddlewareList, WSGIHandler):
    """A WSGIHandler with only the given middleware."""


class GatewayWSGIHandler:
    """Routes each request to its handler; a path in FAST_PATHS may be answered before either runs.

    A fast path takes the WSGI environ and returns ``(request, response)``, or None to let the request
    go on unchanged (queries/hits.py answers cache hits this way).
    """

    def __init__(self) -> None:
        self.site = WSGIHandler()
        self.api = _Handler(api_middleware())
        self.api_prefixes = tuple(settings.API_PATH_PREFIXES)
        self.fast_paths = {
            (method, path): import_string(function)
            for (method, path), function in settings.FAST_PATHS.items()
        }

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        fast = self.fast_paths.get((environ.get("REQUEST_METHOD", ""), path))
        # FAST_PATH_TRIED: the ASGI entry point asked the fast path already (core.asgi).
        if fast is not None and not environ.get(FAST_PATH_TRIED):
            answered = fast(environ)
            if answered is not None:
                response = answered[1]
                start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
                return [response.content]
        if path.startswith(self.api_prefixes):
            return self.api_once_more_if_database_lost(environ, start_response)
        return self.site(environ, start_response)

    def api_once_more_if_database_lost(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """An API request whose database connection PostgreSQL dropped (a restart, a failover) runs
        again on a fresh connection, up to DATABASE_ATTEMPTS in all, so the caller gets an answer
        instead of a 503: a failover often drops connections more than once in a few seconds.

        The body is read first (it is at most REQUEST_MAX_BYTES) so that the retry can read it again.
        """
        body = _buffered_body(environ)
        if body is None:
            return self.api(environ, start_response)
        environ[DATABASE_RETRY] = True
        reply: list[Any] = []

        def hold(status: str, headers: list[Any], exc_info: Any = None) -> Callable[[bytes], None]:
            reply[:] = [status, headers, exc_info]
            return _no_write

        for attempt in range(1, DATABASE_ATTEMPTS + 1):
            environ["wsgi.input"] = io.BytesIO(body)
            response = self.api(environ, hold)
            if attempt == DATABASE_ATTEMPTS or not getattr(response, "database_lost", False):
                break
            response.close()
            connections_reset()
        status, headers, exc_info = reply
        if exc_info is None:
            start_response(status, headers)
        else:
            start_response(status, headers, exc_info)
        return response


def _buffered_body(environ: dict[str, Any]) -> bytes | None:
    """The request's body, read whole; None if its length is unknown or above the limit."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length < 0 or length > settings.REQUEST_MAX_BYTES:
        return None
    return environ["wsgi.input"].read(length) if length else b""


def _no_write(data: bytes) -> None:
    raise RuntimeError("the API's views return their bodies; nothing writes through start_response")


def api_middleware() -> list[str]:
    return [path for path in settings.MIDDLEWARE if path not in settings.BROWSER_MIDDLEWARE]
