"""The public REST API: thin views over queries.services."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core import logs, outbound
from core.errors import NotFound
from core.parsers import json_depth
from queries import schema, services
from queries.auth import request_api_key
from queries.models import Job, Priority, QueryRequest
from queries.quotas import SubmissionRateThrottle
from queries.validation import MODEL_MAX_CHARS, model_problem, query_problem


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of turning them into text."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """Only JSON true and false: "yes", 1 or "0" are mistakes worth reporting."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class QueryCreateApi(APIView):
    throttle_classes = [SubmissionRateThrottle]

    @extend_schema_serializer(component_name="QueryCreate")
    class InputSerializer(serializers.Serializer):
        query = StrictCharField(
            trim_whitespace=False,
            allow_blank=True,
            help_text="The question, sent to the CLI verbatim. Not blank; at most QUERY_MAX_CHARS chars.",
        )
        webhookUrl = StrictCharField(  # noqa: N815
            required=False,
            trim_whitespace=False,
            allow_blank=False,
            max_length=2048,
            help_text="http(s) URL to receive the outcome; must resolve to a public address.",
        )
        priority = serializers.ChoiceField(
            choices=Priority.values,
            required=False,
            default=Priority.NORMAL,
            help_text="Queue to use; a key may be limited to some priorities.",
        )
        model = StrictCharField(
            required=False,
            allow_null=True,
            max_length=MODEL_MAX_CHARS,
            help_text="Model name or alias passed as --model; part of the cache key.",
        )
        metadata = serializers.JSONField(
            required=False,
            allow_null=True,
            help_text="Any JSON object; stored with the request, never sent to Claude, not hashed.",
        )
        noCache = StrictBooleanField(  # noqa: N815
            required=False, default=False, help_text="Skip the cache lookup (the answer is still cached)."
        )
        sessionId = StrictCharField(  # noqa: N815
            required=False,
            max_length=100,
            help_text="Continue the conversation of an earlier answer: its result.sessionId (this key's).",
        )

        def get_fields(self) -> dict[str, serializers.Field]:
            # DRF gives every serializer a deep copy of the declared fields, made by constructing each
            # field again: that was most of a cache hit's validation time. Nothing changes these fields
            # per request, so a shallow copy (which bind() gives its own name and parent) is enough.
            return {name: copy.copy(field) for name, field in self._declared_fields.items()}

        def to_internal_value(self, data: Any) -> Any:
            if not isinstance(data, dict):
                raise serializers.ValidationError({"non_field_errors": ["The body must be a JSON object."]})
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {
                        "non_field_errors": [f"Unknown field(s): {', '.join(unknown)}."],
                        "unknownFields": unknown,
                    }
                )
            return super().to_internal_value(data)

        def validate_query(self, value: str) -> str:
            problem = query_problem(value)
            if problem:
                raise serializers.ValidationError(problem)
            return value

        def validate_webhookUrl(self, value: str) -> str:  # noqa: N802
            try:
                outbound.url_check(value)
            except outbound.UnsafeUrl as exc:
                raise serializers.ValidationError(f"The webhook URL {exc}.") from None
            return value

        def validate_model(self, value: str | None) -> str | None:
            problem = model_problem(value)
            if problem:
                raise serializers.ValidationError(problem)
            return value

        def validate_metadata(self, value: Any) -> Any:
            if value is None:
                return None
            if not isinstance(value, dict):
                raise serializers.ValidationError("Must be a JSON object.")
            depth = json_depth(value)
            if depth > settings.METADATA_MAX_DEPTH:
                raise serializers.ValidationError(
                    f"Is nested {depth} levels deep; the limit is {settings.METADATA_MAX_DEPTH}."
                )
            size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
            if size > settings.METADATA_MAX_BYTES:
                raise serializers.ValidationError(
                    f"Is {size} bytes as JSON; the limit is {settings.METADATA_MAX_BYTES}."
                )
            return value

    @extend_schema(request=InputSerializer, **schema.QUERY_CREATE)
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        submission = services.query_submit(
            api_key=request_api_key(request),
            query=data["query"],
            priority=data["priority"],
            model=data.get("model"),
            webhook_url=data.get("webhookUrl", ""),
            metadata=data.get("metadata"),
            no_cache=data["noCache"],
            session_id=data.get("sessionId"),
        )
        logs.bind(job_id=submission.job_id)
        body: dict[str, Any] = {
            "requestId": str(submission.request_id),
            "jobId": str(submission.job_id),
            "status": submission.job_state,
        }
        if "sessionId" in data:
            # The session this turn continues; the answer's result.sessionId continues this turn.
            body["sessionId"] = data["sessionId"]
        if submission.outcome == QueryRequest.Outcome.CACHED:
            body.update(status="completed", cached=True, result=submission.result)
            return Response(body, status=status.HTTP_200_OK)
        if submission.outcome == QueryRequest.Outcome.DEDUPLICATED:
            body["deduplicated"] = True
        return Response(body, status=status.HTTP_202_ACCEPTED)


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def job_visible(request: Request, job_id: str) -> Job:
    """The job if the caller's key may see it, else the API's 404 (one of its requests points there)."""
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        raise NotFound("No such job: job ids are UUIDs.") from None
    job = services.job_get_for_caller(job_id=parsed, api_key=request_api_key(request))
    if job is None:
        raise NotFound(f"No job {parsed}.")
    return job


class QueryDetailApi(APIView):
    class OutputSerializer(serializers.Serializer):
        def to_representation(self, job: Job) -> dict[str, Any]:
            return {
                "jobId": str(job.id),
                "state": job.state,
                "progress": job.progress,
                "priority": job.priority,
                "createdAt": _iso(job.created_at),
                "startedAt": _iso(job.started_at),
                "finishedAt": _iso(job.finished_at),
                "result": job.result_payload(),
                "error": job.error_payload(),
            }

    @extend_schema(**schema.QUERY_DETAIL)
    def get(self, request: Request, job_id: str) -> Response:
        wait = wait_seconds(request.query_params.get("wait"))
        job = job_visible(request, job_id)
        response = Response(self.OutputSerializer(job).data)
        if wait is not None and not job.is_finished:
            # queries.streaming.query_detail waits that long for the final event, then asks again.
            response.wait_seconds = wait  # type: ignore[attr-defined]
        return response


WAIT_MAX_SECONDS = 60


def wait_seconds(value: str | None) -> float | None:
    """``?wait=S``: a number of seconds, 0 < S <= 60, or None when absent; a 400 naming ``wait``."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= WAIT_MAX_SECONDS:
        raise serializers.ValidationError(
            {"wait": [f"Must be a number of seconds above 0 and at most {WAIT_MAX_SECONDS}."]}
        )
    return seconds
