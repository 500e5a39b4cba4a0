"""End to end: a job's live events through GET /api/query/{jobId}/stream and ``?wait=``, with
gunicorn's uvicorn workers, real rq workers and the real CLI drip-fed by the mock Anthropic API."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from queries import services
from queries.models import ApiKey, QueryRequest
from queries.prompts import Prompt
from tests.support.waiting import wait_finished, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# A 1×1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgAAAAAgABKtKn4wAAAABJRU5ErkJggg=="
)


@dataclass
class Event:
    id: str
    type: str
    data: dict[str, Any]
    at: float


@dataclass
class Stream:
    status: int
    headers: dict[str, str]
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    body: str = ""

    @property
    def text(self) -> str:
        return "".join(e.data["text"] for e in self.events if e.type == "text")

    @property
    def final(self) -> Event:
        return self.events[-1]


def read_stream(base: str, key: str, job_id: str, *, last_event_id: str | None = None) -> Stream:
    """Read the whole stream (it ends after the final event), with each event's arrival time."""
    headers = {"Authorization": f"Bearer {key}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    with httpx.stream("GET", f"{base}/api/query/{job_id}/stream", headers=headers, timeout=60) as response:
        stream = Stream(status=response.status_code, headers=dict(response.headers))
        if response.status_code != 200:
            stream.body = response.read().decode()
            return stream
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line.startswith(":"):
                stream.comments.append(line)
            elif not line:
                if "event" in fields:
                    data = json.loads(fields["data"])
                    stream.events.append(Event(fields["id"], fields["event"], data, time.monotonic()))
                fields = {}
            else:
                name, _, value = line.partition(": ")
                fields[name] = value
    return stream


def submit(http, query: str) -> dict[str, Any]:
    response = http.post(f"{http.base}/api/query", json={"query": query}, timeout=30)
    assert response.status_code in (200, 202), response.text
    return response.json()


def key_of(http) -> str:
    return http.headers["Authorization"].removeprefix("Bearer ")


def test_the_native_stream_sends_text_deltas_as_they_arrive_then_the_result(http, worker_process, mock):
    worker_process()
    job_id = submit(http, "[[mock:drip=5 gap=0.4]] count for me")["jobId"]

    stream = read_stream(http.base, key_of(http), job_id)

    assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-cache"
    texts = [e for e in stream.events if e.type == "text"]
    assert len(texts) >= 5
    # Spread over time as the mock sent them, not delivered at once at the end.
    assert texts[-1].at - texts[0].at >= 1.0
    assert stream.final.type == "result"
    result = stream.final.data["result"]
    assert result["response"] == stream.text == "part1 part2 part3 part4 part5"
    assert result["stopReason"] == "end_turn"
    assert [e.type for e in stream.events].count("result") == 1
    assert any(e.type == "progress" and e.data["state"] == "running" for e in stream.events)
    assert wait_finished(http, job_id)["result"] == result


def test_joined_callers_a_late_reader_and_a_reconnect_see_the_same_stream(http, worker_process, mock):
    worker_process()
    query = "[[mock:drip=4 gap=0.3]] share this"
    first = submit(http, query)
    second = submit(http, query)
    assert second["jobId"] == first["jobId"] and second["deduplicated"] is True
    job_id = first["jobId"]

    streams: list[Stream] = []
    readers = [
        threading.Thread(target=lambda: streams.append(read_stream(http.base, key_of(http), job_id)))
        for _ in range(2)
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=90)
    assert len(streams) == 2
    one, two = ([(e.id, e.type, e.data) for e in s.events] for s in streams)
    assert one == two and one[-1][1] == "result"
    assert len(mock.message_requests()) == 1  # one CLI run for both callers

    late = read_stream(http.base, key_of(http), job_id)
    assert [(e.id, e.type, e.data) for e in late.events] == one

    resumed = read_stream(http.base, key_of(http), job_id, last_event_id=one[1][0])
    assert [(e.id, e.type, e.data) for e in resumed.events] == one[2:]


def test_another_keys_job_is_a_404_and_a_bad_last_event_id_a_400(http, worker_process, mock):
    worker_process()
    job_id = submit(http, "[[mock:drip=2 gap=0.1]] mine")["jobId"]
    _, other = services.api_key_create(name="other")

    refused = read_stream(http.base, other, job_id)
    assert refused.status == 404 and refused.headers["content-type"] == "application/json"
    assert json.loads(refused.body)["error"]["type"] == "not_found_error"
    assert read_stream(http.base, other, str(uuid.uuid4())).status == 404
    assert read_stream(http.base, other, "not-a-uuid").status == 404

    bad = read_stream(http.base, key_of(http), job_id, last_event_id="yesterday")
    assert bad.status == 400 and "Last-Event-ID" in json.loads(bad.body)["error"]["details"]["fields"]


def test_a_cli_failure_mid_stream_ends_the_stream_with_an_error_event(http, worker_process, mock):
    worker_process()
    job_id = submit(http, "[[mock:drip=4 gap=0.2]] [[mock:fail_after=2]] break please")["jobId"]

    stream = read_stream(http.base, key_of(http), job_id)

    assert stream.text.startswith("part1")
    assert stream.final.type == "error"
    error = stream.final.data["error"]
    assert error["type"] == "cli_error" and error["status"] == 400
    assert "failed mid-stream" in error["message"]
    assert wait_finished(http, job_id)["state"] == "failed"


def test_wait_answers_when_the_job_finishes_or_when_the_wait_is_over(http, worker_process, mock):
    worker_process()
    quick = submit(http, "[[mock:drip=3 gap=0.3]] soon")["jobId"]
    started = time.monotonic()
    body = http.get(f"{http.base}/api/query/{quick}", params={"wait": "50"}, timeout=70).json()
    assert body["state"] == "completed" and body["result"]["response"] == "part1 part2 part3"
    assert time.monotonic() - started < 40  # answered when the job ended, not after 50 s

    slow = submit(http, "[[mock:sleep=30]] later")["jobId"]
    started = time.monotonic()
    body = http.get(f"{http.base}/api/query/{slow}", params={"wait": "1.5"}, timeout=30).json()
    elapsed = time.monotonic() - started
    assert body["state"] in ("queued", "running") and body["result"] is None
    assert 1.4 <= elapsed < 20

    for value in ("0", "61", "-1", "soon", "nan"):
        response = http.get(f"{http.base}/api/query/{slow}", params={"wait": value}, timeout=30)
        assert response.status_code == 400, value
        assert "wait" in response.json()["error"]["details"]["fields"]


def test_an_image_block_and_the_system_prompt_reach_upstream(http, worker_process, mock, api_key):
    worker_process()
    key: ApiKey = api_key[0]
    prompt = Prompt(
        content=[
            {"type": "text", "text": "What is in this picture?"},
            {
                "type": "image",
                "source": {
                    "type": "base64",
                    "media_type": "image/png",
                    "data": base64.b64encode(PNG).decode(),
                },
            },
        ],
        system="You answer in one word.",
    )
    submission = services.query_submit(api_key=key, prompt=prompt, api="anthropic")
    assert QueryRequest.objects.get(id=submission.request_id).api == "anthropic"

    body = wait_finished(http, str(submission.job_id))
    assert body["state"] == "completed", body
    wait_for(lambda: mock.received(), timeout=5, message="the upstream request")
    received = mock.received()[-1]
    assert "You answer in one word." in received["system"]
    # The CLI adds context of its own (reminders, agent lists) around the user's message.
    blocks = [
        block for message in received["messages"] if message["role"] == "user" for block in message["content"]
    ]
    assert {"type": "image", "media_type": "image/png", "bytes": len(PNG)} in blocks
    assert any(b.get("text") == "What is in this picture?" for b in blocks)
