"""POST /v1/chat/completions and GET /v1/models with the official openai SDK as the client, against the
real stack: gunicorn, real rq workers, the real claude CLI talking to the mock Anthropic API."""

from __future__ import annotations

import time

import openai
import pytest
from django.conf import settings

from queries.models import Job, QueryRequest
from tests.support.v1 import (
    DRIP,
    DRIPPED,
    MODEL,
    anthropic_client,
    last_user_blocks,
    openai_client,
    png_base64,
    request_text,
    system_text,
    user,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def gpt(web_server, api_key) -> openai.OpenAI:
    return openai_client(web_server, api_key[1])


def test_chat_completions_create_is_answered_by_the_real_cli(gpt, worker_process, mock):
    worker_process()
    raw = gpt.chat.completions.with_raw_response.create(model=MODEL, messages=user("What is 2+2?"))
    completion = raw.parse()
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == MODEL and completion.created > 0 and len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == "4"
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert raw.headers["x-request-id"]
    assert QueryRequest.objects.get().api == "openai"


def test_a_streamed_completion_with_usage(gpt, worker_process, mock):
    worker_process()
    chunks = []
    stream = gpt.chat.completions.create(
        model=MODEL, messages=user(f"{DRIP} count"), stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        chunks.append((time.monotonic(), chunk))
    with_choices = [c for _, c in chunks if c.choices]
    usage_chunks = [c for _, c in chunks if not c.choices]
    assert len(usage_chunks) == 1 and chunks[-1][1] is usage_chunks[0]
    assert usage_chunks[0].usage.completion_tokens > 0
    assert all(c.usage is None for c in with_choices)
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    content = [
        (at, c.choices[0].delta.content) for at, c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(text for _, text in content) == DRIPPED
    assert len(content) >= 3
    assert content[-1][0] - content[0][0] >= 1.0, "the chunks should arrive spread over time"
    assert len({c.id for _, c in chunks}) == 1


def test_system_messages_and_earlier_turns_reach_upstream(gpt, worker_process, mock):
    worker_process()
    gpt.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a terse assistant named Quill."},
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": "My favourite colour is teal."},
            {"role": "assistant", "content": "Noted: teal."},
            {"role": "user", "content": "[[mock:text=It is teal.]] What is my favourite colour?"},
        ],
    )
    body = mock.message_requests()[-1]
    assert "You are a terse assistant named Quill." in system_text(body)
    assert "Answer in English." in system_text(body)
    text = request_text(body)
    assert "My favourite colour is teal." in text and "Noted: teal." in text


def test_an_image_url_part_reaches_upstream_as_an_image(gpt, worker_process, mock):
    worker_process()
    data = png_base64(width=4, height=4)
    gpt.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "[[mock:text=a grey square]] What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                ],
            }
        ],
    )
    images = [b for b in last_user_blocks(mock.message_requests()[-1]) if b.get("type") == "image"]
    # The CLI marks the block for Anthropic's prompt cache (cache_control); the image is the client's.
    assert [b["source"] for b in images] == [{"type": "base64", "media_type": "image/png", "data": data}]


def test_a_repeat_is_answered_from_the_cache_and_shared_with_the_anthropic_api(
    gpt, web_server, api_key, worker_process, mock
):
    worker_process()
    conversation = [{"role": "system", "content": "Be brief."}, *user("Name a bird.")]
    first = gpt.chat.completions.create(model=MODEL, messages=conversation)
    raw = gpt.chat.completions.with_raw_response.create(model=MODEL, messages=conversation)
    assert raw.headers["x-gateway-outcome"] == "cached"
    assert raw.parse().choices[0].message.content == first.choices[0].message.content
    # The same conversation through the Messages API is the same cache entry.
    claude = anthropic_client(web_server, api_key[1])
    via_anthropic = claude.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, system="Be brief.", messages=user("Name a bird.")
    )
    assert via_anthropic.headers["x-gateway-outcome"] == "cached"
    assert via_anthropic.parse().content[0].text == first.choices[0].message.content
    assert len(mock.message_requests()) == 1 and Job.objects.count() == 1
    # Cache hits are recorded by a worker from the journal, a moment after the reply.
    wait_for(
        lambda: (
            sorted(QueryRequest.objects.values_list("api", flat=True)) == ["anthropic", "openai", "openai"]
        ),
        timeout=10,
        message="the three requests, each with its API",
    )


def test_models_list_and_retrieve(gpt):
    models = list(gpt.models.list())
    assert [m.id for m in models] == settings.V1_MODELS
    assert models[0].object == "model" and models[0].owned_by == "anthropic" and models[0].created > 0
    assert gpt.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        gpt.models.retrieve("gpt-unknown")


def test_a_bad_key_is_an_authentication_error(web_server):
    with pytest.raises(openai.AuthenticationError) as info:
        openai_client(web_server, "cgw_not_a_real_key").chat.completions.create(
            model=MODEL, messages=user("hi")
        )
    assert info.value.code == "invalid_api_key" and info.value.response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_each_refused_parameter_is_a_bad_request_naming_it(gpt, fields, param):
    with pytest.raises(openai.BadRequestError) as info:
        gpt.chat.completions.create(model=MODEL, messages=user("hi"), **fields)
    assert info.value.param == param and info.value.type == "invalid_request_error"
    assert QueryRequest.objects.count() == 0


def test_a_cli_failure_is_an_api_error_plain_and_streamed(gpt, worker_process, mock):
    worker_process()
    with pytest.raises(openai.APIError) as info:
        gpt.chat.completions.create(model=MODEL, messages=user("[[mock:error=400]] fail please"))
    assert info.value.code == "cli_error"

    received = []
    with pytest.raises(openai.APIError) as streamed:
        for chunk in gpt.chat.completions.create(
            model=MODEL, messages=user("[[mock:drip=4 gap=0.3]] [[mock:fail_after=2]] go"), stream=True
        ):
            received.append(chunk)
    assert received[0].choices[0].delta.role == "assistant", "the stream had started"
    assert "".join(c.choices[0].delta.content or "" for c in received).split() == ["part1", "part2"]
    assert streamed.value.code == "cli_error"
