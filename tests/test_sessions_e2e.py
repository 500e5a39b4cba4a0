"""Conversations end to end: HTTP in, real rq workers, the real CLI resuming its sessions against the
mock Anthropic API, which records the turns of every upstream request."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
import requests

from queries import services
from queries.models import Job, Session
from tests.support.waiting import wait_finished

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def ask(http: requests.Session, query: str, **extra: object) -> dict:
    """Submit and wait: the finished job's body, the submission's reply under ``"reply"``."""
    response = http.post(f"{http.base}/api/query", json={"query": query, **extra}, timeout=30)
    assert response.status_code in (200, 202), response.text
    reply = response.json()
    body = reply if reply.get("cached") else wait_finished(http, reply["jobId"])
    return {**body, "reply": reply}


def user_texts(turns: list[dict]) -> list[tuple[str, str]]:
    """The user and assistant turns of one upstream request, as (role, text)."""
    return [(t["role"], t["text"]) for t in turns if t["role"] in ("user", "assistant")]


def test_second_turn_resumes_the_session_and_reaches_upstream_with_the_first_as_an_assistant_turn(
    http, worker_process, mock
):
    worker_process()
    first = ask(http, "Name a colour. [[mock:text=Blue.]]")
    assert first["state"] == "completed" and first["result"]["response"] == "Blue."
    session_id = first["result"]["sessionId"]
    stored = Session.objects.get(cli_session_id=session_id)
    assert stored.turns == 1 and stored.size_bytes > 0 and bytes(stored.content)

    second = ask(http, "Why that one? [[mock:text=Because the sky is.]]", sessionId=session_id)
    assert second["reply"]["sessionId"] == session_id
    assert second["state"] == "completed", second
    assert second["result"]["response"] == "Because the sky is."
    # Each turn is a fork: a new session, whose parent is the first.
    assert second["result"]["sessionId"] not in (None, session_id)
    child = Session.objects.get(cli_session_id=second["result"]["sessionId"])
    assert child.parent == stored and child.turns == 2
    job = Job.objects.get(id=second["jobId"])
    assert job.session_mode == "resumed" and job.session_parent == stored

    upstream = user_texts(mock.turns()[-1])
    assert upstream == [
        ("user", "Name a colour. [[mock:text=Blue.]]"),
        ("assistant", "Blue."),
        ("user", "Why that one? [[mock:text=Because the sky is.]]"),
    ]

    # "Why that one?" after another answer is another question: no cache hit across conversations.
    other = ask(http, "Name a fruit. [[mock:text=Pear.]]")
    why = "Why that one? [[mock:text=Because the sky is.]]"
    again = ask(http, why, sessionId=other["result"]["sessionId"])
    assert not again["reply"].get("cached") and again["jobId"] != second["jobId"]
    assert user_texts(mock.turns()[-1])[1] == ("assistant", "Pear.")


def test_another_keys_session_or_an_unknown_one_is_a_404(http, worker_process, mock):
    worker_process()
    first = ask(http, "A secret answer. [[mock:text=Only for A.]]")
    session_id = first["result"]["sessionId"]
    requests_before = len(mock.message_requests())

    _, other_key = services.api_key_create(name="B")
    as_b = requests.post(
        f"{http.base}/api/query",
        json={"query": "And then?", "sessionId": session_id},
        headers={"Authorization": f"Bearer {other_key}"},
        timeout=30,
    )
    assert as_b.status_code == 404, as_b.text
    assert as_b.json()["error"]["type"] == "not_found_error"
    unknown = http.post(
        f"{http.base}/api/query",
        json={"query": "And then?", "sessionId": "00000000-0000-4000-8000-000000000000"},
        timeout=30,
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    not_a_uuid = http.post(f"{http.base}/api/query", json={"query": "x", "sessionId": "../../x"}, timeout=30)
    assert not_a_uuid.status_code == 404
    # Nothing ran, and A's answer is untouched.
    assert len(mock.message_requests()) == requests_before
    assert wait_finished(http, first["jobId"])["result"] == first["result"]


def test_a_continued_turn_resumes_on_another_host_after_the_first_worker_and_its_home_are_gone(
    http, worker_process, processes, tmp_path, mock
):
    first_worker = worker_process()
    first = ask(http, "Remember the number 7. [[mock:text=Noted: 7.]]")
    assert first["state"] == "completed"
    # The first host goes away, abruptly (its whole process group), with its HOME, where the CLI
    # had saved the session.
    os.killpg(first_worker.pid, signal.SIGKILL)
    first_worker.wait(timeout=30)
    (first_home,) = tmp_path.glob("home[0-9]*")
    shutil.rmtree(first_home)

    worker_process()  # a second worker, with a HOME of its own
    (second_home,) = tmp_path.glob("home[0-9]*")
    second = ask(http, "Which number? [[mock:text=It was 7.]]", sessionId=first["result"]["sessionId"])
    assert second["state"] == "completed", second
    assert second["result"]["response"] == "It was 7."
    assert Job.objects.get(id=second["jobId"]).session_mode == "resumed"
    assert user_texts(mock.turns()[-1])[:2] == [
        ("user", "Remember the number 7. [[mock:text=Noted: 7.]]"),
        ("assistant", "Noted: 7."),
    ]
    # The session files left the host's HOME once they were kept in the database.
    assert second_home != first_home
    assert not list(second_home.glob(".claude/projects/*/*.jsonl"))


def test_a_session_not_kept_runs_fresh_with_the_transcript_and_says_so(http, worker_process, mock):
    worker_process()
    first = ask(http, "Pick a letter. [[mock:text=Q.]]")
    stored = Session.objects.get(cli_session_id=first["result"]["sessionId"])
    # As if it had been over SESSION_MAX_BYTES.
    Session.objects.filter(id=stored.id).update(content=None)

    second = ask(http, "And the next one? [[mock:text=R.]]", sessionId=stored.cli_session_id)
    assert second["state"] == "completed" and second["result"]["response"] == "R."
    job = Job.objects.get(id=second["jobId"])
    assert job.session_mode == "fallback" and "SESSION_MAX_BYTES" in job.session_note
    (only_user,) = [t for t in mock.turns()[-1] if t["role"] == "user"]
    assert "User: Pick a letter." in only_user["text"] and "Assistant: Q." in only_user["text"]
    assert only_user["text"].endswith("And the next one? [[mock:text=R.]]")
