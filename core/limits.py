"""Refuse absurd URLs and headers before anything else looks at the request; error pages as JSON."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from core.errors import error_response


class RequestLimitsMiddleware:
    """414 for a URL longer than URL_MAX_CHARS, 431 for headers over HEADERS_MAX_BYTES, as JSON.

    gunicorn refuses what exceeds its own, larger limits (the request line, one header field, the
    number of fields) before Django runs; core.gunicorn_worker gives those refusals the same shape.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return request_limits_refusal(request) or self.get_response(request)


def request_limits_refusal(request: HttpRequest) -> HttpResponse | None:
    """The 414 or 431 for a request past URL_MAX_CHARS or HEADERS_MAX_BYTES; None when within them."""
    if len(request.get_full_path()) > settings.URL_MAX_CHARS:
        return error_response(414, f"The URL is too long; the limit is {settings.URL_MAX_CHARS} characters.")
    header_bytes = sum(
        len(name) + len(value)
        for name, value in request.META.items()
        if name.startswith("HTTP_") or name in ("CONTENT_TYPE", "CONTENT_LENGTH")
        if isinstance(value, str)
    )
    if header_bytes > settings.HEADERS_MAX_BYTES:
        return error_response(
            431, f"The request headers are too large; the limit is {settings.HEADERS_MAX_BYTES} bytes."
        )
    return None


class JsonErrorPagesMiddleware:
    """Any error reply outside the admin that is not already JSON becomes the API's error shape.

    Django answers some refusals without the handler views: ``require_GET`` returns an empty 405,
    static files and third-party views have their own pages. Clients get one shape whatever refused them.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code < 400
            or request.path.startswith("/admin/")
            or response.get("Content-Type", "").startswith("application/json")
            or getattr(response, "streaming", False)
        ):
            return response
        replacement = error_response(
            response.status_code, f"{response.status_code} {response.reason_phrase}."
        )
        for header in ("Allow", "Retry-After", "WWW-Authenticate"):
            if header in response:
                replacement[header] = response[header]
        return replacement
