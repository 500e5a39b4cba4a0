"""The /v1/ body limit under ASGI: refused from the headers, or as soon as a chunked body passes it."""

from __future__ import annotations

import asyncio
import json

from compat.limits import V1BodyLimit


def run(
    scope_path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[list[dict], list[dict]]:
    """Drive the wrapper around an app that reads the whole body; what was sent, and what the app read."""
    sent: list[dict] = []
    read: list[dict] = []
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    given = 0

    async def receive() -> dict:
        nonlocal given
        given += 1
        return pending.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope, receive, send) -> None:
        while True:
            message = await receive()
            read.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        if read[-1]["type"] != "http.disconnect":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    scope = {"type": "http", "path": scope_path, "headers": headers}
    asyncio.run(V1BodyLimit(app)(scope, receive, send))
    return sent, read


def test_a_declared_length_over_the_limit_is_refused_before_the_app_reads(settings):
    settings.V1_MAX_BODY_BYTES = 1024
    sent, read = run("/v1/messages", [(b"content-length", b"5000")], [b"x" * 5000])
    assert read == [] and sent[0]["status"] == 413
    body = json.loads(sent[1]["body"])
    assert body == {
        "type": "error",
        "error": {"type": "request_too_large", "message": body["error"]["message"]},
    }


def test_a_chunked_body_is_cut_off_once_past_the_limit(settings):
    settings.V1_MAX_BODY_BYTES = 1024
    sent, read = run("/v1/chat/completions", [], [b"x" * 600, b"x" * 600, b"x" * 600, b"x" * 600])
    assert [m["type"] for m in read] == ["http.request", "http.disconnect"]
    assert sent[0]["status"] == 413 and json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"


def test_bodies_within_the_limit_and_other_paths_pass(settings):
    settings.V1_MAX_BODY_BYTES = 1024
    sent, _ = run("/v1/messages", [(b"content-length", b"10")], [b"x" * 10])
    assert sent[0]["status"] == 200
    sent, _ = run("/api/query", [(b"content-length", b"5000")], [b"x" * 5000])
    assert sent[0]["status"] == 200
