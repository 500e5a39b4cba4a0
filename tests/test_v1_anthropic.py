"""POST /v1/messages and GET /v1/models with the official anthropic SDK as the client, against the real
stack: gunicorn, real rq workers, the real claude CLI talking to the mock Anthropic API."""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import pytest
from django.conf import settings

from queries.models import Job, QueryRequest
from routing.models import McpServer
from tests.support.v1 import (
    DRIP,
    DRIPPED,
    MODEL,
    anthropic_client,
    last_user_blocks,
    png,
    png_base64,
    request_text,
    system_text,
    user,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def claude(web_server, api_key) -> anthropic.Anthropic:
    return anthropic_client(web_server, api_key[1])


def test_messages_create_is_answered_by_the_real_cli(claude, worker_process, mock):
    worker_process()
    raw = claude.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=user("What is 2+2?"))
    message = raw.parse()
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == MODEL and message.stop_reason == "end_turn" and message.stop_sequence is None
    assert [(b.type, b.text) for b in message.content] == [("text", "4")]
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert raw.headers["request-id"] and raw.headers["x-gateway-outcome"] == "queued"
    assert raw.headers["x-gateway-ignored-params"] == "max_tokens"
    assert len(mock.message_requests()) == 1
    request = QueryRequest.objects.get()
    assert request.api == "anthropic" and str(request.id) == raw.headers["request-id"]
    assert message.id == "msg_" + request.id.hex


def test_the_newer_sdks_parameters_are_accepted_and_named_as_ignored(claude, worker_process, mock):
    worker_process()
    raw = claude.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=64,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "[[mock:text=ok]] hi", "cache_control": {"type": "ephemeral"}}
                ],
            }
        ],
        system=[{"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
        metadata={"user_id": "user-42"},
        cache_control={"type": "ephemeral"},
        service_tier="auto",
        stop_sequences=["STOP"],
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_body={"temperature": 0.2, "top_k": 5},
    )
    assert raw.parse().content[0].text == "ok"
    ignored = set(raw.headers["x-gateway-ignored-params"].split(", "))
    assert {
        "max_tokens",
        "cache_control",
        "service_tier",
        "stop_sequences",
        "thinking",
        "temperature",
    } <= ignored
    assert QueryRequest.objects.get().metadata == {"user_id": "user-42"}


def test_the_system_prompt_and_earlier_turns_reach_upstream(claude, worker_process, mock):
    worker_process()
    message = claude.messages.create(
        model=MODEL,
        max_tokens=64,
        system="You are a terse assistant named Quill.",
        messages=[
            {"role": "user", "content": "My favourite colour is teal."},
            {"role": "assistant", "content": "Noted: teal."},
            {"role": "user", "content": "[[mock:text=It is teal.]] What is my favourite colour?"},
        ],
    )
    assert message.content[0].text == "It is teal."
    body = mock.message_requests()[-1]
    assert "You are a terse assistant named Quill." in system_text(body)
    text = request_text(body)
    assert "My favourite colour is teal." in text and "Noted: teal." in text
    assert text.index("Noted: teal.") < text.index("What is my favourite colour?")


def test_an_image_block_reaches_upstream_as_an_image(claude, worker_process, mock):
    worker_process()
    data = png_base64(width=3, height=3)
    claude.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "[[mock:text=a grey square]] What is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
                ],
            }
        ],
    )
    images = [b for b in last_user_blocks(mock.message_requests()[-1]) if b.get("type") == "image"]
    # The CLI marks the block for Anthropic's prompt cache (cache_control); the image is the client's.
    assert [b["source"] for b in images] == [{"type": "base64", "media_type": "image/png", "data": data}]


def test_a_repeated_call_is_answered_from_the_cache_without_a_cli_run(claude, worker_process, mock):
    worker_process()
    first = claude.messages.create(model=MODEL, max_tokens=64, messages=user("Name a colour."))
    raw = claude.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=user("Name a colour.")
    )
    assert raw.headers["x-gateway-outcome"] == "cached"
    assert raw.parse().content[0].text == first.content[0].text
    assert len(mock.message_requests()) == 1 and Job.objects.count() == 1
    # The same call streamed is the cache's answer too, replayed as events.
    with claude.messages.stream(model=MODEL, max_tokens=64, messages=user("Name a colour.")) as stream:
        assert stream.get_final_text() == first.content[0].text
    # Opting out of the cache for one call runs the CLI again.
    claude.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=user("Name a colour."),
        extra_headers={"x-gateway-cache": "false"},
    )
    assert len(mock.message_requests()) == 2


def test_messages_stream_delivers_deltas_as_the_cli_produces_them(claude, worker_process, mock):
    worker_process()
    deltas: list[tuple[float, str]] = []
    events: list[str] = []
    with claude.messages.stream(model=MODEL, max_tokens=64, messages=user(f"{DRIP} count")) as stream:
        for event in stream:
            events.append(event.type)
            if event.type == "text":
                deltas.append((time.monotonic(), event.text))
        final = stream.get_final_message()
    assert "".join(text for _, text in deltas) == DRIPPED
    assert len(deltas) >= 3
    assert deltas[-1][0] - deltas[0][0] >= 1.0, "the deltas should arrive spread over time, not at once"
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert [b.type for b in final.content] == ["text"]


def test_a_streamed_answer_after_an_mcp_tool_call(seeded, claude, worker_process, mock, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("The secret word is pomegranate.\n")
    McpServer.objects.filter(name="filesystem").update(workdir=str(docs))
    worker_process()
    directive = json.dumps({"path": str(docs / "notes.txt")})
    prompt = f"[[mock:tool=mcp__filesystem__read_text_file input={directive}]] Read the file notes.txt"
    with claude.messages.stream(model=MODEL, max_tokens=64, messages=user(prompt)) as stream:
        final = stream.get_final_message()
    # Routing gave the CLI the filesystem server; the stream holds the answer's text blocks only.
    assert [b.type for b in final.content] == ["text"]
    assert "pomegranate" in final.content[0].text
    assert Job.objects.get().mcp_servers == ["filesystem"] and len(mock.message_requests()) == 2


def test_identical_concurrent_streamed_calls_make_one_cli_run(claude, worker_process, mock):
    worker_process()
    barrier = threading.Barrier(4)

    def one(_: int) -> str:
        barrier.wait(timeout=30)
        with claude.messages.stream(
            model=MODEL, max_tokens=64, messages=user("[[mock:sleep=2]] Name a prime number.")
        ) as stream:
            return stream.get_final_text()

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(one, range(4)))
    assert len(set(answers)) == 1 and answers[0]
    assert Job.objects.count() == 1 and QueryRequest.objects.count() == 4
    assert len(mock.message_requests()) == 1


def test_models_list_and_retrieve(claude):
    models = claude.models.list()
    assert [m.id for m in models.data] == settings.V1_MODELS
    assert models.data[0].type == "model" and models.data[0].display_name
    assert claude.models.retrieve(MODEL).id == MODEL
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("claude-unknown-1")


def test_a_bad_key_is_an_authentication_error(web_server):
    client = anthropic_client(web_server, "cgw_not_a_real_key")
    with pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(model=MODEL, max_tokens=64, messages=user("hi"))
    assert info.value.body["error"]["type"] == "authentication_error"
    assert info.value.response.headers["request-id"]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"model": MODEL, "messages": user("hi")}, "max_tokens: Field required"),
        ({"model": MODEL, "max_tokens": 8, "messages": []}, "messages: at least one message is required"),
        (
            {"model": MODEL, "max_tokens": 8, "messages": user("a") + user("b")},
            'roles must alternate between "user" and "assistant"',
        ),
        (
            {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages.0.content.0.type",
        ),
        (
            {
                "model": MODEL,
                "max_tokens": 8,
                "messages": user("hi"),
                "tools": [{"name": "t", "input_schema": {}}],
            },
            "tools: client tools are not supported",
        ),
    ],
    ids=["no-max-tokens", "empty-messages", "misordered", "unknown-block", "tools"],
)
def test_bad_input_is_a_bad_request_naming_the_field(claude, body, named):
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.post("/v1/messages", body=body, cast_to=anthropic.types.Message)
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert named in info.value.body["error"]["message"]
    assert QueryRequest.objects.count() == 0


def test_an_oversized_image_is_a_bad_request(claude):
    big = base64.b64encode(png(filler=b"x" * (settings.V1_MAX_IMAGE_BYTES + 1024))).decode()
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": big},
                        }
                    ],
                }
            ],
        )
    assert "messages.0.content.0.source.data: image exceeds" in info.value.body["error"]["message"]


def test_a_cli_failure_is_the_sdks_error_plain_and_mid_stream(claude, worker_process, mock):
    worker_process()
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=MODEL, max_tokens=8, messages=user("[[mock:error=400]] fail please"))
    assert "cli_error" in info.value.body["error"]["message"]

    # Two deltas reach the client, then the upstream fails the stream (and the CLI's retry).
    seen: list[str] = []
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as streamed:
        with claude.messages.stream(
            model=MODEL, max_tokens=8, messages=user("[[mock:drip=4 gap=0.3]] [[mock:fail_after=2]] go")
        ) as stream:
            for event in stream:
                seen.append(event.type)
                if event.type == "text":
                    texts.append(event.text)
    assert seen[0] == "message_start" and "".join(texts).split() == ["part1", "part2"]
    assert streamed.value.body["type"] == "error"
    assert streamed.value.body["error"]["type"] == "invalid_request_error"
    assert "cli_error" in streamed.value.body["error"]["message"]
    wait_for(lambda: Job.objects.filter(state="failed").count() == 2, timeout=10, message="both jobs failed")
