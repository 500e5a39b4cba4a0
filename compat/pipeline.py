"""A /v1/ call on the queries pipeline: submitted once, then followed through the job's event stream.

The Anthropic and OpenAI views share this: what they differ in is the wire format only. Every update
a caller sees is one of ``Ping``, ``Text`` (a delta of the answer), ``ToolUse`` (an MCP tool call
between turns), ``Done`` (the Result) and ``Failed`` (an ApiError); ``Done`` or ``Failed`` comes last.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from compat.errors import ApiError, from_gateway_error, from_job_failure
from core.errors import GatewayError
from queries import quotas, services
from queries.models import ApiKey, Priority, QueryRequest
from queries.prompts import Prompt
from queries.services import events

CACHE_HEADER = "HTTP_X_GATEWAY_CACHE"
PRIORITY_HEADER = "HTTP_X_GATEWAY_PRIORITY"
_NO = ("false", "0", "no", "off")


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ToolUse:
    """The CLI called an MCP tool: the text before it was a turn of its own, not the final answer."""

    name: str


@dataclass(frozen=True)
class Done:
    result: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    error: ApiError


Update = Ping | Text | ToolUse | Done | Failed


def gateway_options(request: HttpRequest) -> tuple[bool, str]:
    """``x-gateway-cache: false`` (skip the cache lookup) and ``x-gateway-priority`` from the headers."""
    no_cache = request.META.get(CACHE_HEADER, "").strip().lower() in _NO
    priority = request.META.get(PRIORITY_HEADER, "").strip().lower() or Priority.NORMAL
    if priority not in Priority.values:
        raise ApiError(
            400,
            f"x-gateway-priority: Input should be {', '.join(repr(p) for p in Priority.values)}",
            param="x-gateway-priority",
        )
    return no_cache, priority


def call_submit(
    *,
    request: HttpRequest,
    api_key: ApiKey | None,
    api: str,
    model: str,
    prompt: Prompt,
    metadata: dict[str, Any] | None,
) -> services.Submission:
    """Authorize, count against the key's rate and submit (sync: the ORM). Raises ApiError."""
    no_cache, priority = gateway_options(request)
    try:
        if api_key is not None:
            quotas.quota_rate_take(api_key=api_key)
        return services.query_submit(
            api_key=api_key,
            prompt=prompt,
            api=api,
            model=model,
            priority=priority,
            metadata=metadata,
            no_cache=no_cache,
        )
    except GatewayError as exc:
        raise from_gateway_error(exc.status, exc.type, exc.message, exc.headers) from None


def outcome_header(submission: services.Submission) -> dict[str, str]:
    """Headers that tell an operator how the call was answered."""
    return {"x-gateway-outcome": submission.outcome, "x-gateway-job-id": str(submission.job_id)}


async def call_updates(submission: services.Submission) -> AsyncIterator[Update]:
    """What the caller sees of its submission: a cache hit replayed, else the job's live stream.

    Gives up after V1_MAX_WAIT_SECONDS with a 504 (the job goes on and caches its answer).
    """
    if submission.outcome == QueryRequest.Outcome.CACHED and submission.result is not None:
        source: AsyncIterator[tuple[str, dict[str, Any]] | None] = _replayed(submission.result)
    else:
        source = events.job_events(str(submission.job_id), ping_every=settings.V1_PING_SECONDS)
    deadline = time.monotonic() + settings.V1_MAX_WAIT_SECONDS
    streamed = ""
    async for entry in source:
        if entry is None:
            if time.monotonic() > deadline:
                yield Failed(
                    ApiError(
                        504,
                        f"No answer within {settings.V1_MAX_WAIT_SECONDS:g} s; the job goes on, "
                        "and asking again later may find its answer in the cache.",
                    )
                )
                return
            yield Ping()
            continue
        event = entry[1]
        kind = event.get("type")
        if kind == "text" and event.get("text"):
            streamed += event["text"]
            yield Text(event["text"])
        elif kind == "tool" and event.get("phase") == "start":
            streamed = ""
            yield ToolUse(str(event.get("name") or ""))
        elif kind == "result":
            result = event.get("result") or {}
            response = str(result.get("response") or "")
            # Text the stream did not carry (a reader that joined after it expired) is sent at the end.
            if response != streamed and response.startswith(streamed):
                yield Text(response[len(streamed) :])
            yield Done(result)
            return
        elif kind == "error":
            yield Failed(from_job_failure(event.get("error") or {}))
            return
    yield Failed(ApiError(500, "The job's event stream ended without an outcome."))


async def _replayed(result: dict[str, Any]) -> AsyncIterator[tuple[str, dict[str, Any]] | None]:
    for number, event in enumerate(events.replay(result)):
        yield (f"0-{number}", event)


async def call_outcome(submission: services.Submission) -> Done | Failed:
    """The final update of a call that does not stream."""
    async for update in call_updates(submission):
        if isinstance(update, Done | Failed):
            return update
    return Failed(ApiError(500, "The job's event stream ended without an outcome."))
