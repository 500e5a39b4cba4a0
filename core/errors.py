"""The one JSON error shape of the public API.

``{"error": {"type": ..., "message": ..., "details": {...}}}``: every error on an API path uses it,
whether DRF, Django or the gateway's own services raised it. Never an HTML page, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import BadRequest
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.views import set_rollback

from core.db import database_lost

logger = logging.getLogger(__name__)

STATUS_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    406: "invalid_request_error",
    413: "request_too_large",
    414: "request_too_large",
    415: "invalid_request_error",
    431: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}


class GatewayError(Exception):
    """An error a service raises to end a request with a given status and the documented shape."""

    status = 500
    type = "api_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"


class Overloaded(GatewayError):
    status = 503
    type = "overloaded_error"


def error_body(error_type: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message, "details": details or {}}}


def error_response(status: int, message: str, details: dict[str, Any] | None = None) -> JsonResponse:
    """A plain Django response in the API's error shape, for code that runs outside DRF."""
    return JsonResponse(error_body(STATUS_TYPES.get(status, "api_error"), message, details), status=status)


def _validation_message(detail: Any) -> str:
    """One readable sentence from DRF's nested validation detail."""
    if isinstance(detail, dict):
        parts = []
        for field, value in detail.items():
            inner = _validation_message(value)
            parts.append(inner if field == "non_field_errors" else f"{field}: {inner}")
        return "; ".join(parts)
    if isinstance(detail, list):
        return " ".join(_validation_message(item) for item in detail)
    return str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: map every exception to the documented shape."""
    headers: dict[str, str] = {}
    if isinstance(exc, GatewayError):
        status, error_type, message, details = exc.status, exc.type, exc.message, exc.details
        headers.update(exc.headers)
    elif isinstance(exc, drf.ValidationError):
        status, error_type = 400, "invalid_request_error"
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        message, details = _validation_message(detail), {"fields": detail}
    elif isinstance(exc, Http404):
        status, error_type, message, details = 404, "not_found_error", "Not found.", {}
    elif isinstance(exc, DjangoPermissionDenied):
        status, error_type, message, details = 403, "permission_error", "Permission denied.", {}
    elif isinstance(exc, drf.APIException):
        status = exc.status_code
        if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
            status = 401
        error_type = STATUS_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        message, details = _validation_message(exc.detail), {}
        wait = getattr(exc, "wait", None)  # set by throttles
        if wait is not None:
            headers["Retry-After"] = str(int(wait) + 1)
        if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
            headers["WWW-Authenticate"] = 'Bearer realm="api"'
    elif database_lost(exc):
        logger.warning("the database is unavailable: %s", exc)
        set_rollback()
        return database_unavailable_response(Response)
    else:
        logger.exception("unhandled error in %s", context.get("view").__class__.__name__)
        status, error_type, message, details = 500, "api_error", "Internal error.", {}
    set_rollback()
    return Response(error_body(error_type, message, details), status=status, headers=headers)


DATABASE_UNAVAILABLE = "The database is unavailable; try again shortly."


def database_unavailable_response(kind: Callable[..., Any] = JsonResponse) -> Any:
    """The 503 for a request that lost the database; core.handlers retries it once on a fresh one."""
    response = kind(error_body("overloaded_error", DATABASE_UNAVAILABLE), status=503)
    response["Retry-After"] = "1"
    response.database_lost = True
    return response


def _is_admin_path(request: HttpRequest) -> bool:
    return request.path.startswith("/admin/")


# Django's own error views, used for URLs DRF never sees (unknown paths, CSRF failures, crashes).
# The admin keeps Django's HTML pages; everything else the gateway serves speaks JSON.
def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_admin_path(request):
        return defaults.bad_request(request, exception or BadRequest())
    return error_response(400, "Bad request.")


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_admin_path(request):
        return defaults.permission_denied(request, exception or DjangoPermissionDenied())
    return error_response(403, "Permission denied.")


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_admin_path(request):
        return defaults.page_not_found(request, exception)
    return error_response(404, f"No such endpoint: {request.method} {request.path[:200]}")


def handler500(request: HttpRequest) -> HttpResponse:
    if _is_admin_path(request):
        return defaults.server_error(request)
    return error_response(500, "Internal error.")
