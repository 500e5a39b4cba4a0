"""Conversations through /v1 with the official SDKs: a replayed history that the gateway answered
resumes the CLI session; an edited one runs fresh. The real CLI answers through the mock."""

from __future__ import annotations

import base64

import anthropic
import openai
import pytest

from queries.models import ApiKey, Job, Session

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MODEL = "claude-sonnet-4-5"


@pytest.fixture
def sdk_base(web_server: str, worker_process, api_key: tuple[ApiKey, str]) -> tuple[str, str]:
    worker_process()
    return web_server, api_key[1]


def last_job() -> Job:
    return Job.objects.order_by("-created_at").first()


def upstream_turns(mock) -> list[tuple[str, str]]:
    return [(t["role"], t["text"]) for t in mock.turns()[-1] if t["role"] in ("user", "assistant")]


def test_three_turns_through_the_anthropic_sdk_resume_the_session_and_a_shorter_history_forks(sdk_base, mock):
    base, key = sdk_base
    client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=120)
    turns = [
        ("Name a colour. [[mock:text=Blue.]]", "Blue."),
        ("Why that one? [[mock:text=The sky.]]", "The sky."),
        ("And at night? [[mock:text=Black.]]", "Black."),
    ]
    messages: list[dict] = []
    sessions: list[Session] = []
    for number, (question, answer) in enumerate(turns, start=1):
        messages.append({"role": "user", "content": question})
        reply = client.messages.create(model=MODEL, max_tokens=100, system="Be brief.", messages=messages)
        assert reply.content[0].text == answer
        messages.append({"role": "assistant", "content": reply.content[0].text})
        job = last_job()
        sessions.append(Session.objects.get(job=job))
        assert sessions[-1].turns == number
        if number == 1:
            assert job.session_mode == "fresh" and job.session_parent is None
            continue
        assert job.session_mode == "resumed" and job.session_parent == sessions[-2]
        # Upstream saw the earlier turns as real turns of the session, the new message alone last.
        expected = [
            (role, text) for q, a in turns[: number - 1] for role, text in (("user", q), ("assistant", a))
        ]
        assert upstream_turns(mock) == [*expected, ("user", question)]

    # Back to the first answer, another follow-up: the first turn's session forks a second time.
    forked = client.messages.create(
        model=MODEL,
        max_tokens=100,
        system="Be brief.",
        messages=[*messages[:2], {"role": "user", "content": "Or green? [[mock:text=Green too.]]"}],
    )
    assert forked.content[0].text == "Green too."
    job = last_job()
    assert job.session_mode == "resumed" and job.session_parent == sessions[0]
    assert set(sessions[0].children.values_list("turns", flat=True)) == {2}
    assert sessions[0].children.count() == 2


def test_three_turns_through_the_openai_sdk_resume_the_session(sdk_base, mock):
    base, key = sdk_base
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)
    messages: list[dict] = [{"role": "system", "content": "Be brief."}]
    answers = ["One.", "Two.", "Three."]
    for number, answer in enumerate(answers, start=1):
        messages.append({"role": "user", "content": f"Count, step {number}. [[mock:text={answer}]]"})
        reply = client.chat.completions.create(model=MODEL, messages=messages)
        text = reply.choices[0].message.content
        assert text == answer
        messages.append({"role": "assistant", "content": text})
        job = last_job()
        assert job.session_mode == ("fresh" if number == 1 else "resumed")
        if number > 1:
            roles = [role for role, _ in upstream_turns(mock)]
            assert roles == ["user", "assistant"] * (number - 1) + ["user"]
    assert Session.objects.get(job=last_job()).turns == 3


def test_an_edited_first_turn_runs_fresh_and_the_edit_reaches_upstream(sdk_base, mock):
    base, key = sdk_base
    client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=120)
    first = [{"role": "user", "content": "Name a colour. [[mock:text=Blue.]]"}]
    reply = client.messages.create(model=MODEL, max_tokens=100, messages=first)
    assert reply.content[0].text == "Blue."

    edited = [
        {"role": "user", "content": "Name a warm colour. [[mock:text=Blue.]]"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Really? [[mock:text=Red, then.]]"},
    ]
    again = client.messages.create(model=MODEL, max_tokens=100, messages=edited)
    assert again.content[0].text == "Red, then."
    job = last_job()
    assert job.session_mode == "fresh" and job.session_parent is None
    (only_user,) = [text for role, text in upstream_turns(mock) if role == "user"]
    assert "Name a warm colour." in only_user and only_user.endswith("Really? [[mock:text=Red, then.]]")
    # Its answer is a conversation of its own, which a next turn can continue.
    assert Session.objects.get(job=job).turns == 2


def test_a_resumed_turn_streams_and_its_image_reaches_upstream_as_an_image(sdk_base, mock):
    base, key = sdk_base
    client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=120)
    first = [{"role": "user", "content": "Look at what I send next. [[mock:text=Ready.]]"}]
    assert client.messages.create(model=MODEL, max_tokens=100, messages=first).content[0].text == "Ready."

    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    question = {"type": "text", "text": "What is it? [[mock:text=A picture.]]"}
    answer = {"role": "assistant", "content": "Ready."}
    second = [*first, answer, {"role": "user", "content": [image, question]}]
    with client.messages.stream(model=MODEL, max_tokens=100, messages=second) as stream:
        text = "".join(stream.text_stream)
    assert text == "A picture."
    assert last_job().session_mode == "resumed"
    *earlier, new = [t for t in mock.turns()[-1] if t["role"] in ("user", "assistant")]
    assert [t["role"] for t in earlier] == ["user", "assistant"]
    assert "image" in new["types"] and new["text"] == "What is it? [[mock:text=A picture.]]"
