"""The /v1/ APIs' own body limit, V1_MAX_BODY_BYTES: base64 images make their bodies large.

Refused from the declared Content-Length before anything reads the body, and, for a body without
one (chunked), as soon as more than the limit has arrived: under ASGI by ``V1BodyLimit`` (Django's
ASGI handler reads the whole body before any middleware runs), under WSGI and Django's test client
by ``V1BodyLimitMiddleware``; the view itself never reads past the limit either. What a refusal
leaves unread is drained before the connection closes (core.asgi_body.DrainUnreadBody).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from compat.errors import ApiError, anthropic_error_body, openai_error_body, shared_error_body
from core.asgi_body import Receive, Scope, Send, body_limited

PREFIX = "/v1/"


def error_body_for(path: str, error: ApiError) -> dict[str, Any]:
    """The error shape of the API that ``path`` belongs to."""
    if path.startswith("/v1/messages"):
        return anthropic_error_body(error)
    if path.startswith("/v1/chat/"):
        return openai_error_body(error)
    return shared_error_body(error)


def too_large(length: int | None) -> ApiError:
    limit = settings.V1_MAX_BODY_BYTES
    size = f"{length} bytes" if length is not None else f"over {limit} bytes"
    return ApiError(413, f"Request body is {size}; the limit is {limit} bytes.", code="request_too_large")


def declared_refusal(path: str, content_length: str | None) -> tuple[int, dict[str, Any]] | None:
    """The 413 (or 400 for a bad Content-Length) for a /v1/ request, from its headers alone."""
    if not path.startswith(PREFIX) or not content_length:
        return None
    try:
        length = int(content_length)
    except ValueError:
        return 400, error_body_for(path, ApiError(400, "Content-Length is not a number."))
    if length > settings.V1_MAX_BODY_BYTES:
        return 413, error_body_for(path, too_large(length))
    return None


class V1BodyLimitMiddleware:
    """The declared-length refusal for WSGI and the test client; core's body limit skips /v1/."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        refusal = declared_refusal(request.path, request.META.get("CONTENT_LENGTH"))
        if refusal is not None:
            return JsonResponse(refusal[1], status=refusal[0])
        return self.get_response(request)


def body_read(request: HttpRequest) -> bytes:
    """The body, read at most one byte past V1_MAX_BODY_BYTES (a 413 ApiError past it)."""
    data = request.read(settings.V1_MAX_BODY_BYTES + 1)
    if len(data) > settings.V1_MAX_BODY_BYTES:
        raise too_large(None)
    return data


def body_json(request: HttpRequest) -> Any:
    data = body_read(request)
    if not data.strip():
        raise ApiError(400, "The request body is empty: expected a JSON object.")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}") from None


class V1BodyLimit:
    """ASGI wrapper: a /v1/ body over the limit is refused before the application reads it all."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope.get("type") != "http" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        refusal = declared_refusal(path, declared.decode("latin-1") if declared is not None else None)
        if refusal is not None:
            await _send_json(send, *refusal)
            return

        async def refuse(send: Send) -> None:
            await _send_json(send, 413, error_body_for(path, too_large(None)))

        # Past the limit the 413 is sent and the application is told the client went away.
        receive, send = body_limited(receive, send, settings.V1_MAX_BODY_BYTES, refuse)
        await self.app(scope, receive, send)


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})
