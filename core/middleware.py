from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from core.errors import error_response


class BodySizeLimitMiddleware:
    """Refuse an oversized body from its Content-Length, before anything reads or parses it.

    DRF parsers read the request stream directly, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE alone
    would not stop them; and Django's own refusal is an HTML page. Paths under
    REQUEST_MAX_BYTES_EXEMPT have a limit of their own, in their own error shape (the /v1/ APIs).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(settings.REQUEST_MAX_BYTES_EXEMPT):
            return self.get_response(request)
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


_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT", "PATCH"))


class HttpMetricsMiddleware:
    """django-prometheus's HTTP series that dashboards read, and only those.

    Its middleware pair updates seventeen series per request (body-size histograms, charsets, AJAX
    counts...), each a locked write to a memory-mapped file in multiprocess mode: more time than the
    rest of a cache hit's bookkeeping. This keeps three, under django-prometheus's names:
    ``django_http_requests_total_by_view_transport_method``, ``django_http_responses_total_by_status``
    and ``django_http_requests_latency_seconds_by_view_method``.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        from django_prometheus.middleware import Metrics

        self.get_response = get_response
        metrics = Metrics.get_instance()
        self.requests = metrics.requests_by_view_transport_method
        self.responses = metrics.responses_by_status
        self.latency = metrics.requests_latency_by_view_method

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        self.record(request, response, started, view=match.view_name if match is not None else None)
        return response

    def record(
        self, request: HttpRequest, response: HttpResponse, started: float, *, view: str | None
    ) -> None:
        view = view or "<unnamed view>"
        method = request.method if request.method in _METHODS else "<invalid method>"
        transport = "https" if request.is_secure() else "http"
        self.requests.labels(view=view, transport=transport, method=method).inc()
        self.responses.labels(status=str(response.status_code)).inc()
        self.latency.labels(view=view, method=method).observe(time.perf_counter() - started)
