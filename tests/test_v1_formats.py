"""The /v1/ APIs' request validation and reply formatting, as pure functions (no services)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from compat import anthropic_format, openai_format
from compat.anthropic_request import messages_call_parse
from compat.errors import (
    ApiError,
    anthropic_error_body,
    from_job_failure,
    openai_error_body,
    shared_error_body,
)
from compat.limits import declared_refusal
from compat.models_list import display_name, model_check, models_page
from compat.openai_request import chat_call_parse

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 64).decode()


def anthropic(**fields):
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    } | fields


def chat(**fields):
    return {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]} | fields


def refused(parse, body) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(body)
    return info.value


# --- Anthropic requests ---------------------------------------------------------------------------


def test_a_plain_message_is_one_text_block():
    call = messages_call_parse(anthropic())
    assert call.prompt.content == [{"type": "text", "text": "hi"}] and call.prompt.system == ""
    assert call.stream is False and call.ignored == ["max_tokens"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
            "max_tokens: Field required",
        ),
        (anthropic(messages=[]), "messages: at least one message is required"),
        (
            anthropic(messages=[{"role": "assistant", "content": "hi"}]),
            'first message must use the "user" role',
        ),
        (
            anthropic(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
            'roles must alternate between "user" and "assistant"',
        ),
        (
            anthropic(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
            'the final message must use the "user" role',
        ),
        (
            anthropic(
                messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video"}]}]
            ),
            "messages.0.content.1.type: Input tag 'video' found",
        ),
        (anthropic(messages=[{"role": "robot", "content": "a"}]), "messages.0.role: Input should be"),
        (anthropic(max_tokens="8"), "max_tokens: Input should be a valid integer"),
        (anthropic(max_tokens=0), "max_tokens: Input should be greater than or equal to 1"),
        (anthropic(temperature=3), "temperature: Input should be between 0 and 1"),
        (anthropic(stream="yes"), "stream: Input should be a valid boolean"),
        (anthropic(surprise=1), "surprise: Extra inputs are not permitted"),
        (anthropic(metadata={"user_id": "u", "x": 1}), "metadata.x: Extra inputs are not permitted"),
        (anthropic(tools=[{"name": "t"}]), "tools: client tools are not supported"),
        (anthropic(tool_choice={"type": "auto"}), "tool_choice: client tools are not supported"),
        (anthropic(system=[{"type": "image"}]), "system.0.type: Input should be 'text'"),
    ],
)
def test_anthropic_validation_names_the_field(body, message):
    error = refused(messages_call_parse, body)
    assert error.status == 400 and error.anthropic_type == "invalid_request_error"
    assert message in error.message


def test_the_newer_sdk_params_are_accepted_and_reported_as_ignored():
    call = messages_call_parse(
        anthropic(
            cache_control={"type": "ephemeral"},
            metadata={"user_id": "user-1"},
            thinking={"type": "enabled", "budget_tokens": 1024},
            service_tier="auto",
            stop_sequences=["END"],
            temperature=0.5,
            top_k=5,
            output_config={"effort": "low"},
        )
    )
    assert call.metadata == {"user_id": "user-1"}
    assert {"cache_control", "thinking", "service_tier", "stop_sequences", "temperature", "top_k"} <= set(
        call.ignored
    )


def test_system_blocks_earlier_turns_and_an_image_map_to_the_prompt():
    call = messages_call_parse(
        anthropic(
            system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            messages=[
                {"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello Ada."}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                    ],
                },
            ],
        )
    )
    content = call.prompt.content
    assert call.prompt.system == "Be brief."
    assert content[0]["type"] == "text" and "My name is Ada." in content[0]["text"]
    assert '<turn role="assistant">\nHello Ada.' in content[0]["text"]
    assert content[1:] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    ]


def test_an_image_in_an_earlier_turn_stays_an_image_inside_the_transcript():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": JPEG}}
    call = messages_call_parse(
        anthropic(
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "look"}, image]},
                {"role": "assistant", "content": "a cat"},
                {"role": "user", "content": "colour?"},
            ]
        )
    )
    kinds = [block["type"] for block in call.prompt.content]
    assert kinds == ["text", "image", "text", "text"]
    assert "a cat" in call.prompt.content[2]["text"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"type": "url", "url": "https://example.com/x.png"}, "only base64 image sources"),
        ({"type": "base64", "media_type": "image/tiff", "data": PNG}, "media_type: Input should be"),
        ({"type": "base64", "media_type": "image/png", "data": "not base64!"}, "not valid base64"),
        ({"type": "base64", "media_type": "image/png", "data": JPEG}, "appears to be a image/jpeg image"),
    ],
)
def test_bad_images_are_refused_naming_the_block(source, message):
    body = anthropic(messages=[{"role": "user", "content": [{"type": "image", "source": source}]}])
    error = refused(messages_call_parse, body)
    assert error.message.startswith("messages.0.content.0.source") and message in error.message


def test_an_image_over_the_limit_is_refused_before_decoding(settings):
    settings.V1_MAX_IMAGE_BYTES = 1000
    data = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 2000).decode()
    body = anthropic(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
                ],
            }
        ]
    )
    error = refused(messages_call_parse, body)
    assert (
        error.status == 400 and "image exceeds" in error.message and "messages.0.content.0" in error.message
    )


def test_too_many_messages_and_images_are_refused(settings):
    settings.V1_MAX_MESSAGES = 3
    turns = [{"role": r, "content": "x"} for r in ("user", "assistant", "user", "assistant", "user")]
    assert refused(messages_call_parse, anthropic(messages=turns)).status == 413
    settings.V1_MAX_MESSAGES = 100
    settings.V1_MAX_IMAGES = 1
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    error = refused(messages_call_parse, anthropic(messages=[{"role": "user", "content": [image, image]}]))
    assert error.status == 400 and "too many images" in error.message


# --- OpenAI requests ------------------------------------------------------------------------------


def test_the_same_conversation_makes_the_same_prompt_through_either_api():
    image_url = f"data:image/png;base64,{PNG}"
    via_openai = chat_call_parse(
        chat(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": "Hello Ada."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": image_url, "detail": "low"}},
                    ],
                },
            ]
        )
    )
    via_anthropic = messages_call_parse(
        anthropic(
            system="Be brief.",
            messages=[
                {"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": "Hello Ada."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                    ],
                },
            ],
        )
    )
    assert via_openai.prompt == via_anthropic.prompt


def test_developer_messages_join_the_system_prompt():
    call = chat_call_parse(
        chat(
            messages=[
                {"role": "system", "content": "A."},
                {"role": "developer", "content": [{"type": "text", "text": "B."}]},
                {"role": "user", "content": "hi"},
            ]
        )
    )
    assert call.prompt.system == "A.\n\nB."


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"temperature": 5}, "temperature"),
        ({"surprise": True}, "surprise"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
    ],
)
def test_openai_refusals_name_the_param(fields, param):
    error = refused(chat_call_parse, chat(**fields))
    assert error.status in (400, 413) and error.param == param
    body = openai_error_body(error)["error"]
    assert body["param"] == param and body["type"] == "invalid_request_error" and body["message"]


def test_openai_accepts_n_1_text_format_and_reports_what_it_ignores():
    call = chat_call_parse(
        chat(
            n=1,
            response_format={"type": "text"},
            temperature=0.2,
            max_completion_tokens=9,
            stop=["x"],
            user="u1",
        )
    )
    assert call.metadata == {"user": "u1"} and set(call.ignored) == {
        "temperature",
        "max_completion_tokens",
        "stop",
    }


# --- replies --------------------------------------------------------------------------------------

RESULT = {
    "response": "Hello.",
    "stopReason": "end_turn",
    "usage": {"inputTokens": 12, "outputTokens": 3, "cacheReadInputTokens": 4, "cacheCreationInputTokens": 0},
}


def test_a_message_carries_the_results_text_stop_reason_and_usage():
    body = anthropic_format.message(request_id="0d6f-11", model="claude-sonnet-4-5", result=RESULT)
    assert body["id"] == "msg_0d6f11" and body["type"] == "message" and body["role"] == "assistant"
    assert body["content"] == [{"type": "text", "text": "Hello."}] and body["stop_reason"] == "end_turn"
    assert body["usage"] == {
        "input_tokens": 12,
        "output_tokens": 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4,
    }


def sse_events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for frame in raw.decode().strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_the_streamed_events_are_in_the_apis_order():
    raw = (
        anthropic_format.message_start(request_id="r1", model="m")
        + anthropic_format.ping()
        + anthropic_format.block_start()
        + anthropic_format.text_delta("Hel")
        + anthropic_format.text_delta("lo.")
        + anthropic_format.block_stop()
        + anthropic_format.message_end({**RESULT, "stopReason": "max_tokens"})
    )
    events = sse_events(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    assert (
        events[6][1]["delta"]["stop_reason"] == "max_tokens" and events[6][1]["usage"]["output_tokens"] == 3
    )


def test_errors_in_each_apis_shape():
    error = ApiError(429, "slow down", param=None, headers={"Retry-After": "3"})
    assert anthropic_error_body(error) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }
    assert openai_error_body(error) == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    shared = shared_error_body(ApiError(404, "No such endpoint"))
    assert shared["type"] == "error" and shared["error"]["type"] == "not_found_error"
    assert shared["error"]["message"] and "param" in shared["error"] and "code" in shared["error"]
    assert sse_events(anthropic_format.error_event(ApiError(529, "busy")))[0] == (
        "error",
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
    )


@pytest.mark.parametrize(
    ("failure", "status", "kind"),
    [
        ({"type": "cli_error", "message": "API Error: 400", "status": 400}, 400, "invalid_request_error"),
        ({"type": "cli_error", "message": "API Error: 529", "status": 529}, 529, "overloaded_error"),
        ({"type": "cli_error", "message": "exit 1", "status": None}, 500, "api_error"),
        ({"type": "cli_timeout", "message": "after 120 s"}, 504, "timeout_error"),
        ({"type": "budget_exceeded", "message": "spent"}, 429, "rate_limit_error"),
        ({"type": "queue_unavailable", "message": "down"}, 529, "overloaded_error"),
        ({"type": "worker_lost", "message": "gone"}, 500, "api_error"),
    ],
)
def test_job_failures_map_to_the_apis_statuses(failure, status, kind):
    error = from_job_failure(failure)
    assert error.status == status and error.anthropic_type == kind
    assert failure["type"] in error.message and error.openai_code == failure["type"]


def test_openai_chunks_and_the_usage_chunk():
    common = {"request_id": "r-1", "model": "m", "created": 1}
    chunks = openai_format.Chunks("r-1", "m", 1, include_usage=True)
    first = json.loads(chunks.delta({"role": "assistant", "content": ""})[6:])
    assert (
        first["object"] == "chat.completion.chunk" and first["id"] == "chatcmpl-r1" and first["usage"] is None
    )
    last = json.loads(chunks.usage(RESULT)[6:])
    assert (
        last["choices"] == []
        and last["usage"]["prompt_tokens"] == 16
        and last["usage"]["completion_tokens"] == 3
    )
    assert last["usage"]["total_tokens"] == 19
    body = openai_format.completion(**common, result={**RESULT, "stopReason": "max_tokens"})
    assert (
        body["choices"][0]["finish_reason"] == "length"
        and body["choices"][0]["message"]["content"] == "Hello."
    )
    error = json.loads(openai_format.error_data(ApiError(500, "boom"))[6:])
    assert error == {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}


# --- models and limits ----------------------------------------------------------------------------


def test_the_models_list_has_both_sdks_fields(settings):
    settings.V1_MODELS = ["claude-sonnet-4-5", "claude-haiku-4-5"]
    page = models_page({})
    assert page["object"] == "list" and page["has_more"] is False
    assert page["first_id"] == "claude-sonnet-4-5" and page["last_id"] == "claude-haiku-4-5"
    entry = page["data"][0]
    assert {"id", "object", "created", "owned_by", "type", "display_name", "created_at"} <= set(entry)
    assert models_page({"limit": "1"})["has_more"] is True
    assert models_page({"after_id": "claude-sonnet-4-5"})["data"][0]["id"] == "claude-haiku-4-5"
    assert display_name("claude-sonnet-4-5") == "Claude Sonnet 4.5"
    with pytest.raises(ApiError) as info:
        model_check("gpt-4o")
    assert info.value.status == 404 and info.value.anthropic_type == "not_found_error"


def test_a_declared_body_over_the_v1_limit_is_refused_in_the_apis_shape(settings):
    settings.V1_MAX_BODY_BYTES = 2048
    assert declared_refusal("/v1/messages", "2048") is None
    status, body = declared_refusal("/v1/messages", "4096")
    assert status == 413 and body["error"]["type"] == "request_too_large"
    status, body = declared_refusal("/v1/chat/completions", "4096")
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert declared_refusal("/api/query", "4096") is None


def collect(chunks) -> bytes:
    async def run() -> bytes:
        return b"".join([chunk async for chunk in chunks])

    return asyncio.run(run())


def test_text_around_a_tool_call_streams_as_one_block_per_turn(monkeypatch):
    import uuid

    from compat import views
    from compat.pipeline import Done, Ping, Text, ToolUse
    from queries.services import Submission

    async def updates(submission):
        for update in (
            Ping(),
            Text("Let me look."),
            ToolUse("mcp__fs__read"),
            Text("It says hi."),
            Done(RESULT),
        ):
            yield update

    monkeypatch.setattr(views, "call_updates", updates)
    submission = Submission(
        request_id=uuid.uuid4(), outcome="queued", job_id=uuid.uuid4(), job_state="queued"
    )
    events = sse_events(collect(views._messages_events(submission, messages_call_parse(anthropic()))))
    blocks = [(name, data.get("index")) for name, data in events if name.startswith("content_block")]
    assert blocks == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
    ]
    chat = chat_call_parse({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]})
    raw = collect(views._chat_chunks(submission, chat)).decode()
    contents = [
        json.loads(line[6:])["choices"][0]["delta"].get("content")
        for line in raw.split("\n\n")
        if line.startswith("data: {")
    ]
    assert "".join(c or "" for c in contents) == "Let me look.\n\nIt says hi."
    assert raw.count(": ping") == 1 and raw.endswith("data: [DONE]\n\n")
