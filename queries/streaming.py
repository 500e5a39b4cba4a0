"""The native API's views that wait: a job's live events as Server-Sent Events, and ``?wait=``.

Both are async Django views: a client waiting on a job holds no thread, only a blocked
``XREAD`` on the job's event stream (queries/services/events.py). What they check first (the key,
the job's visibility, the parameters) is the DRF views' own code, run through ``sync_to_async``,
so the answers and errors are exactly those of the rest of the API (a view that lost its database
connection runs once more on a fresh one, as the WSGI-served views do: core.handlers).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.asgi import in_web_thread
from core.db import connections_reset
from core.handlers import DATABASE_ATTEMPTS, DATABASE_RETRY
from queries import schema, services
from queries.api import QueryDetailApi, job_visible
from queries.services.events import is_final

_ENTRY_ID = re.compile(r"\A\d{1,20}-\d{1,20}\Z")
# Sent first: the client's EventSource retries after this many milliseconds when the stream drops.
_RETRY_MS = 2000


class QueryStreamApi(APIView):
    """The checks of ``GET /api/query/{jobId}/stream``: the stream itself is :func:`query_stream`."""

    @extend_schema(**schema.QUERY_STREAM)
    def get(self, request: Request, job_id: str) -> Response:
        job = job_visible(request, job_id)
        after = request.headers.get("Last-Event-ID", "").strip() or "0-0"
        if not _ENTRY_ID.match(after):
            raise exceptions.ValidationError(
                {"Last-Event-ID": ["Must be an id this stream sent (digits-digits), or absent."]}
            )
        return Response({"jobId": str(job.id), "after": after})


def _checked(view: Callable[..., Any]) -> Callable[..., Any]:
    """A DRF view called from an async view, on a web thread (core.asgi.in_web_thread), rendered
    there, ready to return."""

    def call(request: HttpRequest, **kwargs: Any) -> Any:
        response = view(request, **kwargs)
        attempts = 1 if request.META.get(DATABASE_RETRY) else DATABASE_ATTEMPTS
        for _ in range(attempts - 1):
            if not getattr(response, "database_lost", False):
                break
            # PostgreSQL dropped the connection under the view (a restart, a failover): again on a
            # fresh one, as core.handlers does for what it serves (it does so here under WSGI).
            connections_reset()
            response = view(request, **kwargs)
        if hasattr(response, "render"):
            response.render()
        return response

    async def checked(request: HttpRequest, **kwargs: Any) -> Any:
        return await in_web_thread(call, request, **kwargs)

    return checked


_stream_check = _checked(QueryStreamApi.as_view())
_detail = _checked(QueryDetailApi.as_view())


def sse_frame(entry_id: str, event: dict[str, Any]) -> bytes:
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"id: {entry_id}\nevent: {event.get('type', 'message')}\ndata: {data}\n\n".encode()


async def _sse(job_id: str, after: str) -> AsyncIterator[bytes]:
    yield f"retry: {_RETRY_MS}\n\n".encode()
    async for item in services.job_events(job_id, after=after, ping_every=settings.EVENTS_PING_SECONDS):
        if item is None:
            yield b": ping\n\n"  # a comment line: keeps proxies and clients from timing out
        else:
            yield sse_frame(*item)


async def query_stream(request: HttpRequest, job_id: str) -> HttpResponseBase:
    """``GET /api/query/{jobId}/stream``: the job's events from the start (or after
    ``Last-Event-ID``) as Server-Sent Events, then the final ``result`` or ``error`` event, then the
    end of the response. Another key's job is a 404, as with GET /api/query/{jobId}."""
    checked = await _stream_check(request, job_id=job_id)
    if checked.status_code != 200 or request.method != "GET":
        return checked  # a refusal, or OPTIONS and HEAD: the checks' own answer
    response = StreamingHttpResponse(_sse(checked.data["jobId"], checked.data["after"]))
    response["Content-Type"] = "text/event-stream"
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on as it comes
    return response


# drf-spectacular describes these views by the DRF views that check their requests.
query_stream.cls = QueryStreamApi  # type: ignore[attr-defined]
query_stream.initkwargs = {}  # type: ignore[attr-defined]


async def query_detail(request: HttpRequest, job_id: str) -> HttpResponseBase:
    """``GET /api/query/{jobId}``, and with ``?wait=S`` the same answer once the job is final or
    S seconds have passed, whichever comes first (the wait blocks on the job's event stream)."""
    response = await _detail(request, job_id=job_id)
    wait = getattr(response, "wait_seconds", None)
    if wait is None:
        return response
    try:
        async with asyncio.timeout(wait):
            async for item in services.job_events(job_id, ping_every=min(wait, settings.EVENTS_PING_SECONDS)):
                if item is not None and is_final(item[1]):
                    break
    except TimeoutError:
        pass
    return await _detail(request, job_id=job_id)


query_detail.cls = QueryDetailApi  # type: ignore[attr-defined]
query_detail.initkwargs = {}  # type: ignore[attr-defined]
