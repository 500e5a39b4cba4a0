"""The upstream circuit breaker's state machine in the real Redis, and what it does to submissions,
jobs and the operators' views. The end-to-end runs with the real CLI are in test_breaker_e2e.py."""

from __future__ import annotations

import time

import django_rq
import pytest
import time_machine
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from claude_cli.upstream import UpstreamFailure
from queries import services
from queries.models import Job, QueryRequest
from queries.services import breaker

OVERLOADED = UpstreamFailure("overloaded", 529, "overloaded")
RATE_LIMITED = UpstreamFailure("rate_limit", 429, "rate_limit", retry_in=0.5)


@pytest.fixture(autouse=True)
def _breaker(settings, redis_db):
    settings.BREAKER_ENABLED = True
    settings.BREAKER_THRESHOLD = 3
    settings.BREAKER_COOLDOWN = 30.0
    yield
    redis_db.flushdb()  # no open breaker for the tests that follow


def state() -> str:
    return breaker.breaker_status()["state"]


def test_it_opens_after_the_threshold_of_failures_in_a_row_of_one_kind():
    assert [breaker.breaker_failure(OVERLOADED) for _ in range(2)] == [False, False]
    assert state() == "closed" and breaker.breaker_refusal() is None
    # Another kind's failures count apart.
    assert breaker.breaker_failure(UpstreamFailure("network", None, "unknown")) is False
    assert breaker.breaker_failure(OVERLOADED) is True
    status = breaker.breaker_status()
    assert status["state"] == "open" and list(status["kinds"]) == ["overloaded"]
    kind = status["kinds"]["overloaded"]
    assert kind["state"] == "open" and kind["failures"] == 3 and kind["status"] == 529
    assert 29 <= kind["retryAfter"] <= 30 and "overloaded" in kind["message"]

    refusal = breaker.breaker_refusal()
    assert refusal is not None and refusal.status == 503 and refusal.type == "overloaded_error"
    assert refusal.headers["Retry-After"] in ("29", "30")
    assert refusal.details["reason"] == "upstream_overloaded"
    assert breaker.breaker_open() is True
    assert breaker.breaker_worker_admit(holder="w1") is False


def test_an_answer_resets_every_count_and_closes_it():
    for _ in range(2):
        breaker.breaker_failure(OVERLOADED)
    breaker.breaker_success()
    assert [breaker.breaker_failure(OVERLOADED) for _ in range(3)] == [False, False, True]
    breaker.breaker_success()
    assert state() == "closed" and breaker.breaker_worker_admit(holder="w1") is True


def test_a_rate_limit_is_a_429_until_the_later_of_the_cooldown_and_the_reported_reset(settings):
    settings.BREAKER_THRESHOLD = 1
    reset = time.time() + 600
    assert breaker.breaker_failure(UpstreamFailure("rate_limit", 429, "rate_limit", reset_at=reset)) is True
    refusal = breaker.breaker_refusal()
    assert refusal is not None and refusal.status == 429 and refusal.type == "rate_limit_error"
    assert 598 <= int(refusal.headers["Retry-After"]) <= 600
    breaker.breaker_success()
    breaker.breaker_failure(RATE_LIMITED)  # the CLI would retry in 0.5 s: the cooldown is longer
    refusal = breaker.breaker_refusal()
    assert refusal is not None and 29 <= int(refusal.headers["Retry-After"]) <= 30


def test_after_the_cooldown_it_is_half_open_and_one_worker_at_a_time_probes():
    for _ in range(3):
        breaker.breaker_failure(OVERLOADED)
    with time_machine.travel(time.time() + 31, tick=True):
        assert state() == "half_open"
        assert breaker.breaker_refusal() is None and breaker.breaker_open() is False  # submissions go in
        assert breaker.breaker_worker_admit(holder="w1") is True
        assert breaker.breaker_worker_admit(holder="w2") is False
        assert breaker.breaker_worker_admit(holder="w1") is True  # still its probe
        breaker.breaker_probe_release(holder="w2")  # not its to release
        assert breaker.breaker_worker_admit(holder="w2") is False
        breaker.breaker_probe_release(holder="w1")  # its job ended without an answer either way
        assert breaker.breaker_worker_admit(holder="w2") is True

        # The probe's failure opens it again at once, for a new cooldown.
        assert breaker.breaker_failure(OVERLOADED) is True
        assert state() == "open"
        assert breaker.breaker_worker_admit(holder="w3") is False


def test_disabled_it_never_opens(settings):
    settings.BREAKER_ENABLED = False
    assert [breaker.breaker_failure(OVERLOADED) for _ in range(5)] == [False] * 5
    assert breaker.breaker_refusal() is None and breaker.breaker_worker_admit(holder="w") is True


# --- what it does to submissions and jobs ----------------------------------------------------------------


def open_breaker(failure: UpstreamFailure = OVERLOADED) -> None:
    for _ in range(3):
        breaker.breaker_failure(failure)


@pytest.mark.django_db(transaction=True)
def test_an_open_breaker_refuses_new_jobs_with_retry_after_and_writes_no_row(client):
    open_breaker()
    response = client.post("/api/query", {"query": "What is 2+2?"}, format="json")
    assert response.status_code == 503, response.content
    body = response.json()["error"]
    assert body["type"] == "overloaded_error" and body["details"]["reason"] == "upstream_overloaded"
    assert 1 <= int(response["Retry-After"]) <= 30
    assert Job.objects.count() == 0 and QueryRequest.objects.count() == 0

    breaker.breaker_success()
    open_breaker(RATE_LIMITED)
    limited = client.post("/api/query", {"query": "What is 3+3?"}, format="json")
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"
    assert limited.json()["error"]["details"]["reason"] == "upstream_rate_limit"
    assert int(limited["Retry-After"]) >= 1


@pytest.mark.django_db(transaction=True)
def test_a_job_picked_up_while_the_breaker_is_open_stays_queued_under_a_new_rq_job(client):
    job_id = client.post("/api/query", {"query": "hold me"}, format="json").json()["jobId"]
    first_rq_id = Job.objects.get(id=job_id).rq_job_id
    open_breaker()
    assert services.job_run(job_id=job_id) is None
    job = Job.objects.get(id=job_id)
    assert job.state == Job.State.QUEUED and job.started_at is None
    assert job.rq_job_id != first_rq_id
    assert job.rq_job_id in django_rq.get_queue("default").job_ids


@pytest.mark.django_db(transaction=True)
def test_ready_the_dashboard_and_metrics_show_the_breaker(admin_client):
    open_breaker()
    ready = Client().get("/ready").json()["components"]["upstream"]
    assert ready["status"] == "ok" and ready["state"] == "open"
    assert ready["kinds"]["overloaded"]["state"] == "open"

    page = admin_client.get("/admin/").content.decode()
    assert 'data-breaker="open"' in page and 'data-breaker-kind="overloaded"' in page

    text = Client().get("/metrics").content.decode()
    gauges = {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "claude_upstream_breaker_open"
        for sample in family.samples
    }
    assert gauges == {"auth": 0.0, "rate_limit": 0.0, "overloaded": 1.0, "network": 0.0}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("failure", "status"), [(OVERLOADED, 529), (RATE_LIMITED, 429)])
def test_the_v1_apis_refuse_in_their_own_shapes(api_key, failure, status):
    open_breaker(failure)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    anthropic = Client().post(
        "/v1/messages",
        {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": messages},
        content_type="application/json",
        HTTP_X_API_KEY=api_key[1],
    )
    assert anthropic.status_code == status, anthropic.content
    body = anthropic.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == ("overloaded_error" if status == 529 else "rate_limit_error")
    assert int(anthropic["retry-after"]) >= 1

    chat = Client().post(
        "/v1/chat/completions",
        {"model": "claude-sonnet-4-5", "messages": messages},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key[1]}",
    )
    assert chat.status_code == status, chat.content
    error = chat.json()["error"]
    assert error["code"] == ("overloaded" if status == 529 else "rate_limit_exceeded")
    assert int(chat["retry-after"]) >= 1
    assert Job.objects.count() == 0
