from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from core.errors import error_response


class BodySizeLimitMiddleware:
    """Refuse an oversized body from its Content-Length, before anything reads or parses it.

    DRF parsers read the request stream directly, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE alone
    would not stop them; and Django's own refusal is an HTML page.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        raw = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(raw)
        except ValueError:
            return error_response(400, "Content-Length is not a number.")
        limit = settings.REQUEST_MAX_BYTES
        if length > limit:
            return error_response(
                413, f"Request body is {length} bytes; the limit is {limit}.", {"limitBytes": limit}
            )
        return self.get_response(request)
