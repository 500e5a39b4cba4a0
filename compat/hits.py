"""Cache hits of ``POST /v1/messages`` and ``POST /v1/chat/completions`` answered ahead of Django.

The /v1/ views are async: through Django's ASGI handler, the API middleware (adapted to async, a
thread hop each), the view's own hop to a web thread and the event replay, a cache hit cost several
times what ``/api/query``'s fast path (queries/hits.py) costs for the same one Redis round trip. The
settings' FAST_PATHS hand these two paths to the functions below first (core.handlers, core.asgi). They
answer only a plain call that hits the cache:

- the URL, headers and body within the limits the middleware enforces, a JSON body within
  V1_MAX_BODY_BYTES, an allowed host and, with SECURE_SSL_REDIRECT, HTTPS; no ``x-gateway-cache``
  or ``x-gateway-priority`` header;
- a valid API key without a rate limit (a rate limit's slot is taken by the full path);
- a body the API's own parser accepts (compat.anthropic_request, compat.openai_request), with
  ``stream`` false and no ``metadata``, for a model GET /v1/models lists;
- and a cache entry (queries.services.query_cache_answer, which records and counts the hit as the
  full path does, in the request journal).

For such a call the reply is the full path's: the same body (compat.views builds it), status and
headers (``request-id``, ``x-gateway-*``, SecurityMiddleware's, ``X-Request-ID``), the same access
line and HTTP metrics. Anything else returns None with nothing recorded, and the call goes through
Django with its body intact (core.asgi hands it to the async view): the full path answers the
stream, the error or the new job.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpResponse

from compat import views
from compat.anthropic_request import messages_call_parse
from compat.errors import ApiError
from compat.models_list import model_check
from compat.openai_request import chat_call_parse
from core import logs
from queries import auth, hits, services
from queries.models import Priority
from queries.prompts import API_ANTHROPIC, API_OPENAI
from queries.services import journal

logger = logging.getLogger(__name__)

# What makes a call other than plain (compat.pipeline.gateway_options reads them on the full path).
_OPTION_HEADERS = ("HTTP_X_GATEWAY_CACHE", "HTTP_X_GATEWAY_PRIORITY")


def _plain_body(request: WSGIRequest) -> Any:
    """The parsed body if the request is one this path may answer, else None."""
    if any(name in request.META for name in _OPTION_HEADERS):
        return None
    body = hits.plain_json_body(request, max_bytes=settings.V1_MAX_BODY_BYTES)
    if body is None:
        return None
    try:
        # As compat.limits.body_json parses it, so the full path would have read the same call.
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _answer(
    request: WSGIRequest,
    *,
    parse: Callable[[Any], Any],
    api: str,
    answered: Callable[[services.Submission, Any, dict[str, Any]], dict[str, Any]],
) -> HttpResponse | None:
    if settings.SECURE_SSL_REDIRECT and not request.is_secure():
        return None
    data = _plain_body(request)
    if data is None:
        return None
    try:
        call = parse(data)
        model_check(call.model)
    except ApiError:
        return None  # the full path explains it
    if call.stream or call.metadata:
        return None
    key = hits.key_presented(request)
    if key is None:
        return None
    # The key as this process holds it; the answering script checks it is still current.
    api_key, keys_version = auth.api_key_lookup_deferred(key)
    if api_key is None or api_key.rate_limit_per_minute is not None:
        return None
    try:
        submission = services.query_cache_answer(
            api_key=api_key,
            prompt=call.prompt,
            api=api,
            priority=Priority.NORMAL,
            model=call.model,
            keys_version=keys_version,
        )
    except journal.KeysChanged:
        auth.api_keys_forget()
        return None
    if submission is None or submission.result is None:
        return None
    logs.bind(job_id=submission.job_id)
    response = views.json_reply(
        request, answered(submission, call, submission.result), headers=views.call_headers(call, submission)
    )
    # What CommonMiddleware adds on the full path: the length of a body it holds whole.
    response["Content-Length"] = str(len(response.content))
    return response


def _hit(
    environ: dict[str, Any],
    *,
    view: str,
    parse: Callable[[Any], Any],
    api: str,
    answered: Callable[[services.Submission, Any, dict[str, Any]], dict[str, Any]],
) -> tuple[WSGIRequest, HttpResponse] | None:
    parts = hits.middleware_parts()
    started = time.perf_counter()
    request = WSGIRequest(environ)
    with logs.request_scope() as request_id:
        try:
            response = _answer(request, parse=parse, api=api, answered=answered)
        except Exception:
            # Nothing was recorded (the journal's script is the last step): the full path takes over.
            logger.debug("the /v1/ cache-hit path declined after an error", exc_info=True)
            response = None
        if response is None:
            hits.hand_on(environ, request)
            return None
        parts.security.process_response(request, response)
        # Last, as the outermost middleware (core.logs.RequestContextMiddleware) adds it.
        response["X-Request-ID"] = str(request_id)
        parts.metrics.record(request, response, started, view=view)
        logs.access_line(request, response, started)
    return request, response


def messages_cache_hit_response(environ: dict[str, Any]) -> tuple[WSGIRequest, HttpResponse] | None:
    """The reply to a plain ``POST /v1/messages`` cache hit, or None (``wsgi.input`` still whole)."""
    return _hit(
        environ, view="v1-messages", parse=messages_call_parse, api=API_ANTHROPIC, answered=views.message_body
    )


def chat_cache_hit_response(environ: dict[str, Any]) -> tuple[WSGIRequest, HttpResponse] | None:
    """The reply to a plain ``POST /v1/chat/completions`` cache hit, or None."""
    return _hit(
        environ,
        view="v1-chat-completions",
        parse=chat_call_parse,
        api=API_OPENAI,
        answered=views.completion_body,
    )
