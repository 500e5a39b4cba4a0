"""The /v1/ cache-hit path ahead of Django (compat/hits.py), through the ASGI application gunicorn
serves (core.asgi), so the fast path is taken exactly as in production; the same call with the fast
path declining gives the full path's answer (Django's ASGI handler, the async view) to compare with.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from compat import hits, views
from compat.anthropic_request import messages_call_parse
from compat.openai_request import chat_call_parse
from core.asgi import GatewayASGIHandler
from core.redis import redis_client
from queries import services
from queries.models import Job, QueryRequest
from queries.services import journal
from tests.support.v1 import MODEL
from tests.test_asgi import http_scope

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_db")]

MESSAGES = {
    "model": MODEL,
    "max_tokens": 64,
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "What is 2+2?"}],
}
CHAT = {
    "model": MODEL,
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
}
IDS = ("request-id", "x-request-id")


def cache_answer(api_key, parse, api: str, body: dict[str, Any]) -> Job:
    """Answer ``body``'s call as a worker would have, and cache it."""
    parsed = parse(body)
    submission = services.query_submit(
        api_key=api_key, prompt=parsed.prompt, api=api, model=parsed.model, history=parsed.history
    )
    job = Job.objects.get(id=submission.job_id)
    job.state, job.response, job.finished_at = Job.State.COMPLETED, "4", timezone.now()
    job.input_tokens, job.output_tokens = 12, 3
    job.save()
    assert services.cache_put(job=job)
    return job


def post(path: str, body: Any, *, key: str | None, **headers: str) -> tuple[int, dict[bytes, bytes], bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    fields = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    if key is not None:
        fields.append((b"authorization", f"Bearer {key}".encode()))
    fields += [(name.encode(), value.encode()) for name, value in headers.items()]
    return call(path, fields, raw)


def call(path: str, headers: list, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through the ASGI application, from a client that stays connected to the end."""
    sent: list[dict[str, Any]] = []
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.Event().wait()  # until the application is done and stops listening
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    asyncio.run(GatewayASGIHandler()(http_scope(path, "POST", headers), receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.lower(): v for k, v in start["headers"]}, content


def full_path_calls():
    return mock.patch.object(views, "call_submit", autospec=True, side_effect=views.call_submit)


def hits_counted() -> int:
    return int(redis_client().hget("metrics:counters", "claude_cache_hits_total") or 0)


def without_ids(reply: dict[str, Any], request_id: str) -> dict[str, Any]:
    text = json.dumps(reply).replace(request_id, "<id>").replace(uuid.UUID(request_id).hex, "<id>")
    return json.loads(text)


@pytest.mark.parametrize(
    ("path", "parse", "api", "body"),
    [
        ("/v1/messages", messages_call_parse, "anthropic", MESSAGES),
        ("/v1/chat/completions", chat_call_parse, "openai", CHAT),
    ],
    ids=["messages", "chat"],
)
def test_a_plain_v1_cache_hit_is_answered_ahead_of_django_as_the_full_path_answers_it(
    api_key, path, parse, api, body
):
    row, key = api_key
    job = cache_answer(row, parse, api, body)
    with full_path_calls() as full:
        status, headers, content = post(path, body, key=key)
    assert full.call_count == 0 and status == 200
    assert hits_counted() == 1

    with mock.patch.object(hits.services, "query_cache_answer", autospec=True, return_value=None):
        with full_path_calls() as full:
            reference_status, reference_headers, reference = post(path, body, key=key)
    assert full.call_count == 1 and reference_status == 200
    assert reference_headers[b"x-gateway-outcome"] == b"cached" and hits_counted() == 2

    # The same headers with the same values, but for each reply's own request id.
    fast_id, full_id = headers[b"request-id"].decode(), reference_headers[b"request-id"].decode()
    assert {headers[name.encode()] for name in IDS} == {fast_id.encode()}
    assert {reference_headers[name.encode()] for name in IDS} == {full_id.encode()}
    assert fast_id != full_id
    assert [(k, v) for k, v in headers.items() if k.decode() not in IDS] == [
        (k, v) for k, v in reference_headers.items() if k.decode() not in IDS
    ]
    assert list(headers) == list(reference_headers)  # in the same order
    assert headers[b"x-gateway-job-id"] == str(job.id).encode()
    # The same body, byte for byte once the ids (and OpenAI's created second) are set aside.
    fast, expected = json.loads(content), json.loads(reference)
    if api == "openai":
        assert abs(fast.pop("created") - expected.pop("created")) <= 1
    assert without_ids(fast, fast_id) == without_ids(expected, full_id)

    # Recorded through the journal like the full path's hit: a row each, with the ids clients got.
    assert journal.journal_drain() == 2
    for request_id in (fast_id, full_id):
        recorded = QueryRequest.objects.get(id=request_id)
        assert (recorded.outcome, recorded.job_id, recorded.api_key_id, recorded.api) == (
            "cached",
            job.id,
            row.id,
            api,
        )


@pytest.mark.parametrize(
    ("change", "headers", "status"),
    [
        ({"stream": True}, {}, 200),  # the stream goes to the view, which replays the hit
        ({"metadata": {"user_id": "u-1"}}, {}, 200),
        ({}, {"x-gateway-priority": "high"}, 200),
        ({}, {"x-gateway-cache": "false"}, None),  # a new job: the view waits for it (not here)
        ({"model": "claude-nonexistent"}, {}, 404),
        ({"messages": []}, {}, 400),
    ],
    ids=["stream", "metadata", "priority", "no-cache", "model", "invalid"],
)
def test_what_the_fast_path_declines_goes_to_the_full_path_with_its_body(api_key, change, headers, status):
    row, key = api_key
    cache_answer(row, messages_call_parse, "anthropic", MESSAGES)
    if status is None:
        with mock.patch.object(views, "call_outcome", autospec=True) as waited:
            waited.side_effect = _failed
            with full_path_calls() as full:
                code, _, _ = post("/v1/messages", {**MESSAGES, **change}, key=key, **headers)
        assert full.call_count == 1 and waited.call_count == 1
        return
    with full_path_calls() as full:
        code, reply_headers, content = post("/v1/messages", {**MESSAGES, **change}, key=key, **headers)
    assert code == status, content
    assert full.call_count == (1 if status == 200 else 0)  # a refusal comes before the submission
    if change.get("stream"):
        assert reply_headers[b"content-type"].startswith(b"text/event-stream")
        assert b"event: message_stop" in content and b'"4"' in content
    elif status == 200:
        assert reply_headers[b"x-gateway-outcome"] == b"cached"


async def _failed(submission):
    from compat.errors import ApiError
    from compat.pipeline import Failed

    return Failed(ApiError(504, "not waited for here"))


def test_a_bad_key_is_the_full_paths_401(api_key):
    row, _ = api_key
    cache_answer(row, messages_call_parse, "anthropic", MESSAGES)
    code, headers, content = post("/v1/messages", MESSAGES, key="gw_not-a-key")
    assert code == 401 and json.loads(content)["error"]["type"] == "authentication_error"
    assert headers[b"request-id"]
    code, _, content = post("/v1/messages", MESSAGES, key=None)
    assert code == 401
    assert hits_counted() == 0


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
@pytest.mark.parametrize("length", [None, b"0"], ids=["no-content-length", "empty"])
def test_a_post_without_a_body_is_the_full_paths_400(api_key, path, length):
    """The fast path reads the empty body's one message, so the view does not see it a second time."""
    _, key = api_key
    fields = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())]
    if length is not None:
        fields.append((b"content-length", length))
    code, headers, content = call(path, fields, b"")
    assert code == 400, content
    assert headers[b"content-type"].startswith(b"application/json")
    assert json.loads(content)["error"]["type"] == "invalid_request_error"
