"""The OpenAPI description of the public API (drf-spectacular): replies, errors and their headers.

The request body is described by the view's own input serializer; the replies are built as plain
dicts in queries.api, so their shapes are declared here. Limits that follow settings (query length,
metadata size) are written into the schema when it is generated, so the document states the limits
the running gateway enforces.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from core.errors import STATUS_TYPES
from queries.models import Job, Priority

ERROR_TYPES = sorted(set(STATUS_TYPES.values()))
JOB_ERROR_TYPES = [choice.value for choice in Job.ErrorType]


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "queries.auth.ApiKeyAuthentication"
    name = ["BearerKey", "ApiKeyHeader"]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        # Either header will do: two requirements, not one that needs both.
        return [{name: []} for name in self.name]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return [
            {
                "type": "http",
                "scheme": "bearer",
                "description": "`Authorization: Bearer <key>`. Keys start with `cgw_`.",
            },
            {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "The same key, as `X-API-Key`.",
            },
        ]


# --- replies -------------------------------------------------------------------------------------


class UsageSerializer(serializers.Serializer):
    inputTokens = serializers.IntegerField(allow_null=True, help_text="Input tokens the CLI reported.")  # noqa: N815
    outputTokens = serializers.IntegerField(allow_null=True, help_text="Output tokens.")  # noqa: N815
    cacheReadInputTokens = serializers.IntegerField(  # noqa: N815
        allow_null=True, help_text="Input tokens read from Anthropic's prompt cache."
    )
    cacheCreationInputTokens = serializers.IntegerField(  # noqa: N815
        allow_null=True, help_text="Input tokens written to Anthropic's prompt cache."
    )


class ResultSerializer(serializers.Serializer):
    response = serializers.CharField(allow_blank=True, help_text="The answer text, as the CLI returned it.")
    format = serializers.ChoiceField(
        choices=["text", "json"], help_text="`json` when the answer is a JSON object or array."
    )
    model = serializers.CharField(allow_null=True, allow_blank=True, help_text="The model that answered.")
    intent = serializers.CharField(
        allow_blank=True, help_text="The intent routing chose (`general` when none matched)."
    )
    mcpServers = serializers.ListField(  # noqa: N815
        child=serializers.CharField(allow_blank=True),
        help_text="MCP servers the CLI was given for this query.",
    )
    sessionId = serializers.CharField(  # noqa: N815
        allow_null=True,
        allow_blank=True,
        help_text="The CLI session of this answer: send it as `sessionId` to continue the conversation.",
    )
    durationMs = serializers.IntegerField(allow_null=True, help_text="The CLI's own duration.")  # noqa: N815
    numTurns = serializers.IntegerField(allow_null=True, help_text="Model turns the CLI took.")  # noqa: N815
    costUsd = serializers.FloatField(  # noqa: N815
        allow_null=True, help_text="What the run cost (the CLI's `total_cost_usd`); 0 when served from cache."
    )
    usage = UsageSerializer(help_text="Token counts.")
    stopReason = serializers.CharField(  # noqa: N815
        allow_null=True, help_text="Why the answer ended, as the CLI reported it: `end_turn`, `max_tokens`..."
    )


class QueryQueuedSerializer(serializers.Serializer):
    requestId = serializers.UUIDField(help_text="This submission's own id (every submission is recorded).")  # noqa: N815
    jobId = serializers.UUIDField(help_text="The job that will answer it; poll `GET /api/query/{jobId}`.")  # noqa: N815
    status = serializers.ChoiceField(choices=["queued", "running"], help_text="The job's state now.")
    deduplicated = serializers.BooleanField(
        required=False,
        help_text="Present (true) when an identical query was already in flight and this joined its job.",
    )
    sessionId = serializers.CharField(  # noqa: N815
        required=False, help_text="Present when the query gave one: the session this turn continues."
    )


class QueryCachedSerializer(serializers.Serializer):
    requestId = serializers.UUIDField(help_text="This submission's own id.")  # noqa: N815
    jobId = serializers.UUIDField(help_text="The job that produced the cached answer.")  # noqa: N815
    status = serializers.ChoiceField(choices=["completed"], help_text="Always `completed`.")
    cached = serializers.BooleanField(help_text="Always true: answered from the cache.")
    result = ResultSerializer(help_text="The cached answer.")


class JobErrorSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=JOB_ERROR_TYPES, help_text="Why the job failed.")
    message = serializers.CharField(allow_blank=True, help_text="What happened, in words.")


class QueryDetailSerializer(serializers.Serializer):
    jobId = serializers.UUIDField(help_text="The job's id.")  # noqa: N815
    state = serializers.ChoiceField(choices=Job.State.values, help_text="Where the job is in its life.")
    progress = serializers.IntegerField(
        min_value=0,
        max_value=100,
        help_text="0 queued, 10 CLI started, 80 CLI answered, 90 cached, 100 done, failed or cancelled.",
    )
    priority = serializers.ChoiceField(choices=Priority.values, help_text="The queue the job went to.")
    createdAt = serializers.DateTimeField(help_text="When the job was created (UTC).")  # noqa: N815
    startedAt = serializers.DateTimeField(allow_null=True, help_text="When a worker took it.")  # noqa: N815
    finishedAt = serializers.DateTimeField(allow_null=True, help_text="When it ended.")  # noqa: N815
    result = ResultSerializer(allow_null=True, help_text="The answer once `state` is `completed`, else null.")
    error = JobErrorSerializer(
        allow_null=True, help_text="Why it failed, once `state` is `failed`, else null."
    )


# --- errors ----------------------------------------------------------------------------------------


class ErrorBodySerializer(serializers.Serializer):
    type = serializers.ChoiceField(
        choices=ERROR_TYPES, help_text="The error's kind; tied to the status code."
    )
    message = serializers.CharField(help_text="What went wrong, for a person.")
    details = serializers.DictField(
        help_text=(
            "Machine-readable particulars: `fields` (per-field messages) and `unknownFields` for 400s, "
            "`reason` for 403 and 429 (`priority_not_allowed`, `model_not_allowed`, `rate_limit`, "
            "`concurrency_limit`, `budget_exceeded`), `limitBytes` for 413."
        )
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer(help_text="Every error reply has this one shape.")


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=description)


ERROR_400 = _error(
    "Invalid request: a field is missing, malformed or over its limit, an unknown field was sent, or "
    "the body is not a JSON object."
)
ERROR_401 = _error("No API key, or an invalid, revoked or expired one.")
ERROR_404 = _error("Unknown job, or a job that none of this key's requests point to.")
ERROR_405 = _error("Method not allowed on this path.")
ERROR_414 = _error("The URL is longer than the gateway accepts.")
ERROR_431 = _error("The request headers are larger than the gateway accepts.")
ERROR_500 = _error("A gateway bug; the traceback is in the server log, never in the reply.")

RETRY_AFTER = OpenApiParameter(
    name="Retry-After",
    type=int,
    location=OpenApiParameter.HEADER,
    required=True,
    response=[429],
    description="Seconds to wait before trying again.",
)
WWW_AUTHENTICATE = OpenApiParameter(
    name="WWW-Authenticate",
    type=str,
    location=OpenApiParameter.HEADER,
    required=False,
    response=[401],
    description="The scheme to authenticate with: `Bearer`.",
)

QUERY_CREATE: dict[str, Any] = {
    "operation_id": "query_create",
    "summary": "Submit a query",
    "description": (
        "Answers from the cache (200), joins an identical query already in flight (202, "
        "`deduplicated: true`) or queues a new job (202). Identical means equal after Unicode NFC, "
        "trimming, collapsing whitespace and lowercasing, with the same model and MCP servers; with "
        "`CACHE_SCOPE=key` (the default) only the same key's queries are identical. With "
        "`sessionId` the query continues that answer's conversation in its CLI session; its key "
        "covers the conversation."
    ),
    "parameters": [RETRY_AFTER, WWW_AUTHENTICATE],
    "responses": {
        200: OpenApiResponse(QueryCachedSerializer, description="Answered from the cache."),
        202: OpenApiResponse(QueryQueuedSerializer, description="Queued, or joined an in-flight job."),
        400: ERROR_400,
        401: ERROR_401,
        403: _error("This key may not use the requested priority or model (`details.reason`)."),
        404: _error(
            "`sessionId` names no session this key may continue (unknown, expired or another key's)."
        ),
        405: ERROR_405,
        413: _error("The body is larger than `REQUEST_MAX_BYTES` (checked before it is read)."),
        414: ERROR_414,
        415: _error("The body is not `application/json`."),
        429: _error(
            "A per-key quota refused the query: `details.reason` is `rate_limit`, `concurrency_limit` "
            "or `budget_exceeded`. Cache hits are served even over budget or at the concurrency limit. "
            "`upstream_rate_limit`: the upstream circuit breaker is open for a rate limit (`Retry-After`)."
        ),
        431: ERROR_431,
        500: ERROR_500,
        503: _error(
            "Redis (cache, queue or quotas) is unavailable; or the upstream circuit breaker is open "
            "(`details.reason` `upstream_<kind>`, `Retry-After`). Try again shortly."
        ),
    },
    "examples": [
        OpenApiExample(
            "A question", value={"query": "What is 2+2?", "priority": "normal"}, request_only=True
        ),
    ],
}

JOB_ID = OpenApiParameter(
    "job_id",
    type=str,
    location=OpenApiParameter.PATH,
    description="The `jobId` a submission returned (a UUID).",
)
JOB_ERRORS = {
    400: ERROR_400,
    401: ERROR_401,
    404: ERROR_404,
    405: ERROR_405,
    414: ERROR_414,
    431: ERROR_431,
    500: ERROR_500,
}

QUERY_DETAIL: dict[str, Any] = {
    "operation_id": "query_detail",
    "summary": "A job's state and result",
    "parameters": [
        JOB_ID,
        OpenApiParameter(
            "wait",
            type=float,
            location=OpenApiParameter.QUERY,
            required=False,
            description=(
                "Seconds to wait (above 0, at most 60) for the job to finish before answering: the "
                "reply comes as soon as the job is final, or with its current state once they pass."
            ),
        ),
        WWW_AUTHENTICATE,
    ],
    "responses": {
        200: OpenApiResponse(QueryDetailSerializer, description="The job."),
        **JOB_ERRORS,
    },
}


QUERY_STREAM: dict[str, Any] = {
    "operation_id": "query_stream",
    "summary": "A job's live events (Server-Sent Events)",
    "description": (
        "The job's events from the start, as `text/event-stream`: `id:` the event's id, `event:` "
        "`progress`, `text` (a delta of the answer), `tool` (an MCP tool starting or ending), then "
        "exactly one `result` (the Result) or `error` (`{type, message, status}`), and the response "
        "ends. `data:` is the event as JSON. A comment line (`: ping`) is sent every "
        "`EVENTS_PING_SECONDS` while nothing happens. Send `Last-Event-ID` to resume after an event. "
        "Every caller joined to the job sees the same stream."
    ),
    "parameters": [
        JOB_ID,
        OpenApiParameter(
            "Last-Event-ID",
            type=str,
            location=OpenApiParameter.HEADER,
            required=False,
            pattern=r"^\d+-\d+$",
            description="Resume after this event (the `id:` of the last event received).",
        ),
        WWW_AUTHENTICATE,
    ],
    "responses": {
        (200, "text/event-stream"): OpenApiResponse(
            OpenApiTypes.STR, description="The events, until the final one."
        ),
        **JOB_ERRORS,
    },
}


# --- generated-schema adjustments ------------------------------------------------------------------


def _error_ref() -> dict[str, Any]:
    return {"$ref": "#/components/schemas/Error"}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def add_plain_django_paths(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """POSTPROCESSING_HOOK: settings-driven limits on the request body, and the plain Django views."""
    request_schema = result.get("components", {}).get("schemas", {}).get("QueryCreateRequest")
    if request_schema is not None:
        properties = request_schema["properties"]
        # Unknown fields are refused.
        request_schema["additionalProperties"] = False
        properties["query"].update(minLength=1, maxLength=settings.QUERY_MAX_CHARS, pattern=r"\S")
        properties["model"]["pattern"] = r"^[A-Za-z0-9._:\[\]][A-Za-z0-9._:\[\]@/-]*$"
        properties["webhookUrl"].update(format="uri", pattern=r"^https?://")
        properties["metadata"].update(type="object", additionalProperties=True)
        limits = f"{settings.METADATA_MAX_BYTES} bytes as JSON and {settings.METADATA_MAX_DEPTH} levels deep"
        properties["metadata"]["description"] += f" At most {limits}."

    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Health"] = {
        "type": "object",
        "properties": {"status": {"type": "string", "enum": ["ok"], "description": "Always `ok`."}},
        "required": ["status"],
    }
    components["Readiness"] = {
        "type": "object",
        "properties": {
            "status": {
                "type": "string",
                "enum": ["ok", "unavailable"],
                "description": "`ok` when every component is up.",
            },
            "components": {
                "type": "object",
                "description": "database, redis, workers and claude, each with its status and latency.",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "down"]},
                        "latencyMs": {"type": "number"},
                        "error": {"type": "string", "description": "Why the component is down."},
                    },
                    "required": ["status", "latencyMs"],
                },
            },
        },
        "required": ["status", "components"],
    }
    no_auth: list[dict[str, Any]] = [{}]
    paths = result.setdefault("paths", {})
    paths["/health"] = {
        "get": {
            "operationId": "health",
            "summary": "Liveness",
            "description": "200 whenever the process serves; touches nothing else. No key needed.",
            "tags": ["health"],
            "security": no_auth,
            "responses": {
                "200": _json_response("The process serves.", {"$ref": "#/components/schemas/Health"}),
                "405": _json_response("Method not allowed.", _error_ref()),
                "414": _json_response("URL too long.", _error_ref()),
                "431": _json_response("Headers too large.", _error_ref()),
            },
        }
    }
    paths["/ready"] = {
        "get": {
            "operationId": "ready",
            "summary": "Readiness",
            "description": (
                "Checks the database, Redis, live queue workers and the Claude CLI; 503 names what is down. "
                "No key needed."
            ),
            "tags": ["health"],
            "security": no_auth,
            "responses": {
                "200": _json_response("Every component is up.", {"$ref": "#/components/schemas/Readiness"}),
                "503": _json_response("A component is down.", {"$ref": "#/components/schemas/Readiness"}),
                "405": _json_response("Method not allowed.", _error_ref()),
                "414": _json_response("URL too long.", _error_ref()),
                "431": _json_response("Headers too large.", _error_ref()),
            },
        }
    }
    return result
