"""Cache hits answered ahead of Django's request handling: the API's hot path.

A cache hit is one Redis round trip of real work (queries/journal.py), yet through Django's handler,
its middleware, DRF and a serializer it cost four times what a bare Django view reading the same key
costs. ``core.handlers`` hands every ``POST /api/query`` to ``cache_hit_response`` first. It answers
only a plain request that hits the cache:

- the URL, headers and body within the limits the middleware enforces, a JSON body, an allowed host
  and, with SECURE_SSL_REDIRECT, HTTPS;
- a valid API key without a rate limit (a rate limit's slot is taken by the full path);
- only ``query`` with, optionally, ``priority``, ``model`` and ``noCache: false``, valid by the API's
  own rules (queries.validation);
- and a cache entry (queries.services.query_cache_answer, which records and counts the hit).

For such a request the reply is what the full path would send: the same body, status and headers
(SecurityMiddleware's among them), the same requestId in ``X-Request-ID`` and in the access line, the
same HTTP metrics. Anything else (a miss, an error of any kind, a webhook, a refusal to make) returns
None with nothing recorded, and the request goes through Django as if this did not exist, with its
body intact: the full path produces the 400, 401, 403, 413, 429 or the new job.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpResponse
from django.middleware.security import SecurityMiddleware

from core import logs
from core.handlers import ON_THREAD
from core.limits import request_limits_refusal
from core.middleware import HttpMetricsMiddleware
from core.parsers import json_loads_strict
from queries import auth, services, validation
from queries.models import Priority
from queries.services import journal

logger = logging.getLogger(__name__)

VIEW_NAME = "query-create"
_FIELDS = frozenset(("query", "priority", "model", "noCache"))
_PRIORITIES = frozenset(Priority.values)
_JSON_TYPES = frozenset(
    ("application/json", "application/json; charset=utf-8", "application/json;charset=utf-8")
)

Answered = tuple[WSGIRequest, HttpResponse]


class _Parts:
    """Middleware pieces the reply shares with the full path, made once per process."""

    def __init__(self) -> None:
        self.security = SecurityMiddleware(lambda request: HttpResponse())
        self.metrics = HttpMetricsMiddleware(lambda request: HttpResponse())


_parts: _Parts | None = None


def middleware_parts() -> _Parts:
    """SecurityMiddleware and the HTTP metrics, as the full path runs them (compat.hits too)."""
    global _parts
    if _parts is None:
        _parts = _Parts()
    return _parts


def plain_json_body(request: WSGIRequest, *, max_bytes: int) -> bytes | None:
    """The body of a request a fast path may answer: no query string, no chunked body, a JSON
    content type, a length from 1 to ``max_bytes``, within the request limits and from an allowed
    host, over HTTPS if SECURE_SSL_REDIRECT asks for it; else None (compat.hits too)."""
    if settings.SECURE_SSL_REDIRECT and not request.is_secure():
        return None
    meta = request.META
    if meta.get("QUERY_STRING") or "HTTP_TRANSFER_ENCODING" in meta:
        return None
    if meta.get("CONTENT_TYPE", "").lower() not in _JSON_TYPES:
        return None
    length = meta.get("CONTENT_LENGTH", "")
    if not length.isdigit() or not 0 < int(length) <= max_bytes:
        return None
    if request_limits_refusal(request) is not None:
        return None
    try:
        request.get_host()
    except DisallowedHost:
        return None
    return request.body


def _plain_body(request: WSGIRequest) -> dict[str, Any] | None:
    """The parsed body if the request is one this path may answer, else None."""
    body = plain_json_body(request, max_bytes=settings.REQUEST_MAX_BYTES)
    if body is None:
        return None
    try:
        data = json_loads_strict(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not set(data) <= _FIELDS:
        return None
    query, model = data.get("query"), data.get("model")
    if not isinstance(query, str) or validation.query_problem(query):
        return None
    if data.get("priority", Priority.NORMAL) not in _PRIORITIES or data.get("noCache", False) is not False:
        return None
    if model is not None and (
        not isinstance(model, str)
        or len(model) > validation.MODEL_MAX_CHARS
        or validation.model_problem(model)
    ):
        return None
    return data


def _answer(request: WSGIRequest, request_id: Any) -> HttpResponse | None:
    inputs = _inputs(request)
    if inputs is None:
        return None
    data, key = inputs
    # The key as this process holds it; the answering script checks it is still current.
    api_key, keys_version = auth.api_key_lookup_deferred(key)
    if api_key is None or api_key.rate_limit_per_minute is not None:
        return None
    try:
        submission = services.query_cache_answer(api_key=api_key, keys_version=keys_version, **_query(data))
    except journal.KeysChanged:
        auth.api_keys_forget()
        return None
    return _reply(submission, request_id)


def _query(data: dict[str, Any]) -> dict[str, Any]:
    priority = data.get("priority", Priority.NORMAL)
    return {"query": data["query"], "priority": priority, "model": data.get("model")}


def _inputs(request: WSGIRequest) -> tuple[dict[str, Any], str] | None:
    """The body and the presented key of a request this path may answer, else None."""
    data = _plain_body(request)
    if data is None:
        return None
    key = key_presented(request)
    if key is None:
        return None
    return data, key


def key_presented(request: WSGIRequest) -> str | None:
    """The API key the request presents, None without one or with a malformed Authorization
    header (the full path explains it) (compat.hits too)."""
    try:
        return auth.presented_key(request)
    except Exception:
        return None


def _reply(submission: services.Submission | None, request_id: Any) -> HttpResponse | None:
    if submission is None:
        return None
    logs.bind(job_id=submission.job_id)
    body = {
        "requestId": str(submission.request_id),
        "jobId": str(submission.job_id),
        "status": "completed",
        "cached": True,
        "result": submission.result,
    }
    # As DRF's JSONRenderer writes it: compact, UTF-8, with U+2028 and U+2029 escaped.
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    content = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode()
    response = HttpResponse(content, content_type="application/json", status=200)
    response["Allow"] = "POST, OPTIONS"
    response["Content-Length"] = str(len(content))
    response["X-Request-ID"] = str(request_id)
    return response


def _finish(request: WSGIRequest, response: HttpResponse, started: float) -> None:
    """What the full path's middleware does to and for the reply: headers, metrics, the access line."""
    parts = middleware_parts()
    parts.security.process_response(request, response)
    parts.metrics.record(request, response, started, view=VIEW_NAME)
    logs.access_line(request, response, started)


def hand_on(environ: dict[str, Any], request: WSGIRequest) -> None:
    """Give the full path the body a fast path read (compat.hits too)."""
    if hasattr(request, "_body"):
        # The body was read from the socket: hand it on to the full path.
        environ["wsgi.input"] = io.BytesIO(request._body)


def cache_hit_response(environ: dict[str, Any]) -> Answered | None:
    """The reply to a plain cache hit, or None (with ``wsgi.input`` still holding the whole body)."""
    started = time.perf_counter()
    request = WSGIRequest(environ)
    with logs.request_scope() as request_id:
        try:
            response = _answer(request, request_id)
        except Exception:
            # Nothing was recorded (the journal's script is the last step): the full path takes over.
            logger.debug("the cache-hit path declined after an error", exc_info=True)
            response = None
        if response is None:
            hand_on(environ, request)
            return None
        _finish(request, response, started)
    return request, response


async def cache_hit_response_on_loop(environ: dict[str, Any]) -> Answered | object | None:
    """cache_hit_response on the ASGI event loop (core/asgi.py), its one Redis round trip over
    redis.asyncio: no thread hop each way, and the same reply, record, count, metrics and access line.

    Only what needs no blocking call is answered here: a key this process holds (and need not mark
    used), routing rules loaded and fresh. For anything else it returns ``ON_THREAD`` before doing
    anything, and cache_hit_response runs on a thread as it always did. None, as there: the full
    path (a miss, an error, a key that changed), nothing recorded, the body intact.
    """
    started = time.perf_counter()
    request = WSGIRequest(environ)
    with logs.request_scope() as request_id:
        try:
            response = await _answer_on_loop(request, request_id)
        except services.NeedsThread:
            response = ON_THREAD
        except Exception:
            logger.debug("the cache-hit path declined after an error", exc_info=True)
            response = None
        if not isinstance(response, HttpResponse):
            hand_on(environ, request)
            return response
        _finish(request, response, started)
    return request, response


async def _answer_on_loop(request: WSGIRequest, request_id: Any) -> HttpResponse | object | None:
    inputs = _inputs(request)
    if inputs is None:
        return None
    data, key = inputs
    held = auth.api_key_held(key)
    if held is None:
        return ON_THREAD  # the key is not held, or is due to be marked used: a database round trip
    api_key, keys_version = held
    if api_key.rate_limit_per_minute is not None:
        return None
    try:
        submission = await services.query_cache_answer_on_loop(
            api_key=api_key, keys_version=keys_version, **_query(data)
        )
    except journal.KeysChanged:
        auth.api_keys_forget()
        return ON_THREAD  # the key is read again there, and the hit answered if it still may be
    return _reply(submission, request_id)
