from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from core.db import database_lost
from core.errors import database_unavailable_response, error_response


class DatabaseUnavailableMiddleware:
    """A view outside DRF that lost the database answers the JSON 503 (DRF views: core.errors)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if database_lost(exception) and not request.path.startswith("/admin/"):
            return database_unavailable_response()
        return None


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
        # The labelled series, as labels() returns them: looked up once per combination, not per request.
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._statuses: dict[int, Any] = {}

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
        series = self._series.get((view, transport, method))
        if series is None:
            series = self._series[view, transport, method] = (
                self.requests.labels(view=view, transport=transport, method=method),
                self.latency.labels(view=view, method=method),
            )
        status = response.status_code
        responses = self._statuses.get(status)
        if responses is None:
            responses = self._statuses[status] = self.responses.labels(status=str(status))
        series[0].inc()
        responses.inc()
        series[1].observe(time.perf_counter() - started)
