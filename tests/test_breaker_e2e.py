"""The upstream circuit breaker end to end: gunicorn, a real rq worker, the real claude CLI against
the mock Anthropic API in an outage (every request answered 529 or 429), then its end; refusals
on the native API and, through the official SDKs, on /v1/."""

from __future__ import annotations

import time

import anthropic
import openai
import pytest

from queries.models import Job
from tests.support.processes import group_members
from tests.support.v1 import MODEL, anthropic_client, openai_client, user
from tests.support.waiting import wait_finished, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BREAKER_ENV = {"BREAKER_THRESHOLD": "3", "BREAKER_COOLDOWN": "3"}


def submit(http, query: str):
    return http.post(f"{http.base}/api/query", json={"query": query}, timeout=30)


def breaker_state(http) -> dict:
    return http.get(f"{http.base}/ready", timeout=30).json()["components"]["upstream"]


@pytest.mark.parametrize(
    ("outage", "kind", "status", "error_type", "v1_status"),
    [(529, "overloaded", 503, "overloaded_error", 529), (429, "rate_limit", 429, "rate_limit_error", 429)],
)
def test_an_outage_opens_the_breaker_holds_the_job_and_refuses_new_ones_until_a_probe_answers(
    http, api_key, worker_process, mock, outage, kind, status, error_type, v1_status
):
    worker_process(env=BREAKER_ENV)
    mock.outage = outage
    held_id = submit(http, "What is 2+2?").json()["jobId"]
    first_cli = wait_for(
        lambda: Job.objects.filter(id=held_id).values_list("cli_pid", flat=True).first(),
        timeout=30,
        message="the CLI to start",
    )
    # The CLI retries; its third failed request opens the breaker, and the job waits in its queue.
    wait_for(lambda: breaker_state(http)["state"] == "open", timeout=60, message="the breaker to open")
    wait_for(
        lambda: Job.objects.filter(id=held_id, state=Job.State.QUEUED).exclude(rq_job_id=held_id).exists(),
        timeout=30,
        message="the job to be queued again",
    )
    assert group_members(first_cli) == []  # the retrying CLI was stopped
    assert breaker_state(http)["kinds"][kind]["status"] == outage
    upstream_calls = len(mock.message_requests())

    timings = []
    for n in range(20):
        started = time.monotonic()
        refused = submit(http, f"What is 3+{n}?")
        timings.append(time.monotonic() - started)
        assert refused.status_code == status, refused.text
    timings.sort()
    median, slowest = timings[10] * 1000, timings[-1] * 1000
    print(f"open breaker ({outage}): 20 refusals, median {median:.1f} ms, max {slowest:.1f} ms")
    assert timings[-1] < 1.0
    assert refused.json()["error"]["type"] == error_type
    assert refused.json()["error"]["details"]["reason"] == f"upstream_{kind}"
    assert int(refused.headers["Retry-After"]) >= 1
    # The /v1/ APIs refuse in their own shapes, as the official SDKs read them.
    with pytest.raises(anthropic.APIStatusError) as refused_anthropic:
        anthropic_client(http.base, api_key[1]).messages.create(
            model=MODEL, max_tokens=64, messages=user("What is 5+5?")
        )
    assert refused_anthropic.value.status_code == v1_status
    assert refused_anthropic.value.body["error"]["type"] == error_type
    assert int(refused_anthropic.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.APIStatusError) as refused_openai:
        openai_client(http.base, api_key[1]).chat.completions.create(
            model=MODEL, messages=user("What is 6+6?")
        )
    assert refused_openai.value.status_code == v1_status
    assert refused_openai.value.type == ("rate_limit_error" if outage == 429 else "server_error")
    assert int(refused_openai.value.response.headers["retry-after"]) >= 1
    assert Job.objects.count() == 1  # no job, so no CLI, for any refused query
    metrics = http.get(f"{http.base}/metrics", timeout=30).text
    assert f'claude_upstream_breaker_open{{kind="{kind}"}} 1.0' in metrics

    # The outage ends; after the cooldown one probe runs the held job, and its answer closes the breaker.
    mock.outage = None
    body = wait_finished(http, held_id, timeout=90)
    assert body["state"] == "completed" and body["result"]["response"] == "4", body
    assert breaker_state(http)["state"] == "closed"
    assert len(mock.message_requests()) > upstream_calls

    again = submit(http, "What is 3+3?")
    assert again.status_code == 202, again.text
    assert wait_finished(http, again.json()["jobId"])["state"] == "completed"
