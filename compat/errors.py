"""The /v1/ APIs' errors: one exception, each API's error body, and how pipeline failures map to them.

Anthropic: ``{"type": "error", "error": {"type", "message"}}``. OpenAI: ``{"error": {"message",
"type", "param", "code"}}``. The paths both SDKs use (``/v1/models``, unknown ``/v1/`` paths) answer
with a body that is both at once, so either SDK reads its own fields from it.
"""

from __future__ import annotations

from typing import Any

# The Anthropic API's error type for each status it uses.
ANTHROPIC_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    414: "request_too_large",
    431: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# OpenAI's error type and code for each status.
OPENAI_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    402: ("insufficient_quota", "insufficient_quota"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    414: ("invalid_request_error", "request_too_large"),
    431: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    504: ("timeout_error", "timeout"),
    529: ("server_error", "overloaded"),
}


class ApiError(Exception):
    """Ends a /v1/ call with ``status``; ``param`` names the offending field (OpenAI's ``param``).

    ``error_type`` overrides the type the status implies; ``code`` is OpenAI's ``code``.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type
        self.headers = headers or {}

    @property
    def anthropic_type(self) -> str:
        if self.error_type in ANTHROPIC_TYPES.values():
            return self.error_type  # type: ignore[return-value]
        return ANTHROPIC_TYPES.get(
            self.status, "api_error" if self.status >= 500 else "invalid_request_error"
        )

    @property
    def openai_type(self) -> str:
        return OPENAI_TYPES.get(
            self.status, ("server_error" if self.status >= 500 else "invalid_request_error", None)
        )[0]

    @property
    def openai_code(self) -> str | None:
        return self.code or OPENAI_TYPES.get(self.status, ("", None))[1]


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 invalid_request_error; Anthropic's message names the field first, as the real API's does."""
    return ApiError(400, message, param=param, code=code)


def anthropic_error_body(error: ApiError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}


def openai_error_body(error: ApiError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.openai_type,
            "param": error.param,
            "code": error.openai_code,
        }
    }


def shared_error_body(error: ApiError) -> dict[str, Any]:
    """Both shapes in one body: Anthropic's ``type`` and ``error.type``, OpenAI's ``param`` and ``code``."""
    body = anthropic_error_body(error)
    body["error"].update(param=error.param, code=error.openai_code)
    return body


def from_gateway_error(status: int, error_type: str, message: str, headers: dict[str, str]) -> ApiError:
    """A refusal of the pipeline's (quota, permission, queue) as the /v1/ APIs report it.

    The native API's 503 ``overloaded_error`` is Anthropic's 529; 429s keep their ``retry-after``.
    """
    if status == 503 or error_type == "overloaded_error":
        return ApiError(529, message, error_type="overloaded_error", headers=headers)
    kept = {name: value for name, value in headers.items() if name.lower() == "retry-after"}
    return ApiError(status, message, headers=kept)


# A job's failure (Job.ErrorType) as the API's status; cli_error keeps the upstream status it reported.
JOB_FAILURE_STATUS: dict[str, int] = {
    "cli_timeout": 504,
    "cli_error": 500,
    "cli_output_invalid": 500,
    "cli_not_found": 500,
    "worker_lost": 500,
    "cancelled": 500,
    "budget_exceeded": 429,
    "queue_unavailable": 529,
    "mcp_unavailable": 500,
    "internal_error": 500,
    # The upstream refused the gateway's own credentials: the gateway's fault, not the caller's key.
    "upstream_auth": 500,
}


def from_job_failure(error: dict[str, Any]) -> ApiError:
    """The final ``error`` event of a job (type, message, upstream status) as an ApiError."""
    failure = str(error.get("type") or "internal_error")
    message = str(error.get("message") or "The job failed.")
    upstream = error.get("status")
    status = JOB_FAILURE_STATUS.get(failure, 500)
    if failure == "cli_error" and isinstance(upstream, int) and 400 <= upstream <= 599:
        status = upstream
    return ApiError(status, f"{message} (job failure: {failure})", code=failure)
