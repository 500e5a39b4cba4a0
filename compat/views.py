"""The /v1/ views: thin, async (the streams are long-lived), with the ORM work in one sync step.

Each view authenticates, parses and submits on a web thread (``core.asgi.in_web_thread``: bounded,
long-lived threads whose database connections are reused), then answers from the job's
events: a JSON body when the client waits, an SSE stream when it streams.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from compat import anthropic_format, openai_format
from compat.anthropic_request import MessagesCall, messages_call_parse
from compat.auth import caller_key
from compat.errors import ApiError, from_gateway_error
from compat.limits import body_json, error_body_for
from compat.models_list import model_check, model_get, models_page
from compat.openai_request import ChatCall, chat_call_parse
from compat.pipeline import (
    Done,
    Failed,
    Ping,
    Text,
    ToolUse,
    call_outcome,
    call_submit,
    call_updates,
    outcome_header,
)
from core import logs
from core.asgi import in_web_thread
from core.db import DATABASE_ERRORS
from core.errors import DATABASE_UNAVAILABLE
from queries import services
from queries.prompts import API_ANTHROPIC, API_OPENAI

logger = logging.getLogger(__name__)

IGNORED_HEADER = "x-gateway-ignored-params"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _in_thread(func: Callable[..., Any], *args: Any) -> Any:
    """``func`` (ORM work) on a web thread. A database that is down, or that dropped the connection
    under it, is the API's own overloaded error with ``retry-after``, not the native 503's shape."""
    try:
        return await in_web_thread(func, *args)
    except DATABASE_ERRORS as exc:
        logger.warning("the database is unavailable: %s", exc)
        raise from_gateway_error(503, "overloaded_error", DATABASE_UNAVAILABLE, {"Retry-After": "1"}) from exc


def json_reply(
    request: HttpRequest, body: dict[str, Any], *, status: int = 200, headers: dict | None = None
) -> HttpResponse:
    response = JsonResponse(body, status=status, json_dumps_params={"ensure_ascii": False})
    for name, value in (headers or {}).items():
        response[name] = value
    response["request-id"] = logs.request_id() or ""
    return response


def _error(request: HttpRequest, error: ApiError) -> HttpResponse:
    return json_reply(
        request, error_body_for(request.path, error), status=error.status, headers=error.headers
    )


def _method_not_allowed(request: HttpRequest, allowed: str) -> HttpResponse:
    response = _error(request, ApiError(405, f"Method {request.method} is not allowed on {request.path}."))
    response["Allow"] = allowed
    return response


def _accept(request: HttpRequest, parse: Callable[[Any], Any], api: str) -> tuple[Any, services.Submission]:
    """Authenticate, parse, check the model and submit: the sync (ORM) part of a call."""
    api_key = caller_key(request)
    call = parse(body_json(request))
    model_check(call.model)
    submission = call_submit(
        request=request,
        api_key=api_key,
        api=api,
        model=call.model,
        prompt=call.prompt,
        metadata=call.metadata,
        history=call.history,
    )
    logs.bind(job_id=submission.job_id)
    return call, submission


def call_headers(call: MessagesCall | ChatCall, submission: services.Submission) -> dict[str, str]:
    headers = outcome_header(submission)
    if call.ignored:
        headers[IGNORED_HEADER] = ", ".join(call.ignored)
    return headers


def _stream(
    request: HttpRequest, chunks: AsyncIterator[bytes], headers: dict[str, str]
) -> StreamingHttpResponse:
    response = StreamingHttpResponse(chunks, content_type="text/event-stream; charset=utf-8")
    for name, value in {**SSE_HEADERS, **headers}.items():
        response[name] = value
    response["request-id"] = logs.request_id() or ""
    return response


async def _create(
    request: HttpRequest,
    *,
    api: str,
    parse: Callable[[Any], Any],
    streamed: Callable[[services.Submission, Any], AsyncIterator[bytes]],
    answered: Callable[[services.Submission, Any, dict[str, Any]], dict[str, Any]],
) -> HttpResponseBase:
    """One POST of either API: submitted, then streamed, or answered once the job's outcome is in."""
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    try:
        call, submission = await _in_thread(_accept, request, parse, api)
    except ApiError as error:
        return _error(request, error)
    headers = call_headers(call, submission)
    if call.stream:
        return _stream(request, streamed(submission, call), headers)
    outcome = await call_outcome(submission)
    if isinstance(outcome, Failed):
        return _error(request, outcome.error)
    return json_reply(request, answered(submission, call, outcome.result), headers=headers)


# --- Anthropic: POST /v1/messages ---------------------------------------------------------------


@csrf_exempt
async def messages_create(request: HttpRequest) -> HttpResponseBase:
    return await _create(
        request,
        api=API_ANTHROPIC,
        parse=messages_call_parse,
        streamed=_messages_events,
        answered=message_body,
    )


def message_body(
    submission: services.Submission, call: MessagesCall, result: dict[str, Any]
) -> dict[str, Any]:
    return anthropic_format.message(request_id=str(submission.request_id), model=call.model, result=result)


async def _messages_events(submission: services.Submission, call: MessagesCall) -> AsyncIterator[bytes]:
    """The Messages API's event order: message_start, the text block, message_delta, message_stop."""
    yield anthropic_format.message_start(request_id=str(submission.request_id), model=call.model)
    yield anthropic_format.ping()
    # One text block per turn: a tool call between turns closes the block, the next text opens one.
    index, opened = 0, False
    async for update in call_updates(submission):
        if isinstance(update, Ping):
            yield anthropic_format.ping()
        elif isinstance(update, Text):
            if not opened:
                opened = True
                yield anthropic_format.block_start(index)
            yield anthropic_format.text_delta(update.text, index)
        elif isinstance(update, ToolUse):
            if opened:
                yield anthropic_format.block_stop(index)
                index, opened = index + 1, False
        elif isinstance(update, Done):
            if not opened:
                yield anthropic_format.block_start(index)
            yield anthropic_format.block_stop(index)
            yield anthropic_format.message_end(update.result)
        elif isinstance(update, Failed):
            yield anthropic_format.error_event(update.error)


# --- OpenAI: POST /v1/chat/completions ----------------------------------------------------------


@csrf_exempt
async def chat_completions_create(request: HttpRequest) -> HttpResponseBase:
    return await _create(
        request, api=API_OPENAI, parse=chat_call_parse, streamed=_chat_chunks, answered=completion_body
    )


def completion_body(
    submission: services.Submission, call: ChatCall, result: dict[str, Any]
) -> dict[str, Any]:
    return openai_format.completion(
        request_id=str(submission.request_id), model=call.model, created=int(time.time()), result=result
    )


async def _chat_chunks(submission: services.Submission, call: ChatCall) -> AsyncIterator[bytes]:
    """The role first, content deltas as they arrive, finish_reason last, the usage chunk, [DONE]."""
    chunks = openai_format.Chunks(
        str(submission.request_id), call.model, int(time.time()), call.include_usage
    )
    yield chunks.delta({"role": "assistant", "content": ""})
    # Text after a tool call is the next turn's: a blank line keeps it apart from the one before.
    sent, after_tool = False, False
    async for update in call_updates(submission):
        if isinstance(update, Ping):
            yield openai_format.KEEPALIVE
        elif isinstance(update, Text):
            text = ("\n\n" if after_tool and sent else "") + update.text
            sent, after_tool = True, False
            yield chunks.delta({"content": text})
        elif isinstance(update, ToolUse):
            after_tool = True
        elif isinstance(update, Done):
            yield chunks.delta({}, finish=openai_format.finish_reason(update.result))
            if call.include_usage:
                yield chunks.usage(update.result)
            yield openai_format.DONE
        elif isinstance(update, Failed):
            yield openai_format.error_data(update.error)


# --- both: GET /v1/models, unknown paths ----------------------------------------------------------


def _authenticated(request: HttpRequest) -> None:
    caller_key(request)


@csrf_exempt
async def models_list(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request, "GET, HEAD")
    try:
        await _in_thread(_authenticated, request)
        return json_reply(request, models_page(request.GET.dict()))
    except ApiError as error:
        return _error(request, error)


@csrf_exempt
async def models_detail(request: HttpRequest, model_id: str) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request, "GET, HEAD")
    try:
        await _in_thread(_authenticated, request)
        return json_reply(request, model_get(model_id))
    except ApiError as error:
        return _error(request, error)


@csrf_exempt
def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    return _error(request, ApiError(404, f"No such endpoint: {request.method} {request.path[:200]}"))
