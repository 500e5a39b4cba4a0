"""Per-key limits against the real Redis and PostgreSQL: rate, concurrency, budget, priorities, models."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
import requests
from django.utils import timezone
from rest_framework.test import APIClient

from core.redis import redis_client
from queries import quotas, services
from queries.models import ApiKey, Job, QueryRequest
from tests.support.pipeline import run_queued_jobs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_db")]


def make_key(**limits) -> tuple[ApiKey, str]:
    api_key, key = services.api_key_create(name="limited")
    ApiKey.objects.filter(pk=api_key.pk).update(**limits)
    api_key.refresh_from_db()
    return api_key, key


def client_for(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def post(client: APIClient, body: dict):
    return client.post("/api/query", body, format="json")


def assert_refused(response, status: int, error_type: str, reason: str | None = None) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(response.json()) == {"error"} and error["type"] == error_type and error["message"]
    if reason is not None:
        assert error["details"]["reason"] == reason
    return error


# --- rate ------------------------------------------------------------------------------------------


def test_rate_limit_admits_exactly_the_limit_then_429_with_retry_after():
    _, key = make_key(rate_limit_per_minute=3)
    client = client_for(key)
    codes = [post(client, {"query": f"question {i}"}).status_code for i in range(5)]
    assert codes == [202, 202, 202, 429, 429]
    response = post(client, {"query": "one more"})
    error = assert_refused(response, 429, "rate_limit_error", "rate_limit")
    assert error["details"]["limit"] == 3 and error["details"]["windowSeconds"] == 60
    assert 1 <= int(response["Retry-After"]) <= 60
    assert QueryRequest.objects.count() == 3  # refusals are not submissions


def test_rate_limit_counts_cache_hits_and_is_per_key(fake_claude):
    _, key = make_key(rate_limit_per_minute=2)
    client = client_for(key)
    assert post(client, {"query": "cached question"}).status_code == 202
    run_queued_jobs()
    assert post(client, {"query": "cached question"}).status_code == 200
    assert_refused(post(client, {"query": "cached question"}), 429, "rate_limit_error", "rate_limit")
    _, other = make_key(rate_limit_per_minute=2)
    assert post(client_for(other), {"query": "x"}).status_code == 202


def test_rate_window_slides(monkeypatch):
    monkeypatch.setattr(quotas, "RATE_WINDOW_MS", 1000)
    api_key, _ = make_key(rate_limit_per_minute=2)
    quotas.quota_rate_take(api_key=api_key)
    quotas.quota_rate_take(api_key=api_key)
    with pytest.raises(quotas.QuotaExceeded):
        quotas.quota_rate_take(api_key=api_key)
    time.sleep(1.05)
    quotas.quota_rate_take(api_key=api_key)


def test_rate_limit_is_exact_under_a_threaded_burst():
    api_key, _ = make_key(rate_limit_per_minute=50)
    barrier = threading.Barrier(40)

    def take(_: int) -> int:
        barrier.wait(timeout=10)
        admitted = 0
        for _ in range(5):
            try:
                quotas.quota_rate_take(api_key=api_key)
                admitted += 1
            except quotas.QuotaExceeded:
                pass
        return admitted

    with ThreadPoolExecutor(max_workers=40) as pool:
        assert sum(pool.map(take, range(40))) == 50


# --- concurrency -----------------------------------------------------------------------------------


def test_concurrency_limit_counts_queued_jobs_and_frees_slots_when_they_finish(fake_claude):
    api_key, key = make_key(max_concurrent_jobs=2)
    client = client_for(key)
    assert post(client, {"query": "first"}).status_code == 202
    assert post(client, {"query": "second"}).status_code == 202
    response = post(client, {"query": "third"})
    error = assert_refused(response, 429, "rate_limit_error", "concurrency_limit")
    assert error["details"]["limit"] == 2 and int(response["Retry-After"]) >= 1
    assert Job.objects.count() == 2

    assert run_queued_jobs() == 2
    assert redis_client().zcard(quotas.JOBS_KEY.format(api_key.pk)) == 0
    assert post(client, {"query": "third"}).status_code == 202


def test_joins_and_cache_hits_do_not_take_a_slot(fake_claude):
    api_key, key = make_key(max_concurrent_jobs=1)
    client = client_for(key)
    first = post(client, {"query": "shared"}).json()
    joined = post(client, {"query": "  SHARED  "})
    assert joined.status_code == 202 and joined.json()["jobId"] == first["jobId"]
    assert joined.json()["deduplicated"] is True
    assert_refused(post(client, {"query": "another"}), 429, "rate_limit_error", "concurrency_limit")
    run_queued_jobs()

    assert post(client, {"query": "blocker"}).status_code == 202  # holds the only slot now
    cached = post(client, {"query": "shared"})
    assert cached.status_code == 200 and cached.json()["cached"] is True


def test_a_refused_new_job_releases_its_in_flight_mark():
    _, key = make_key(max_concurrent_jobs=1)
    client = client_for(key)
    post(client, {"query": "occupies the slot"})
    assert_refused(post(client, {"query": "refused one"}), 429, "rate_limit_error", "concurrency_limit")
    marks = [k for k in redis_client().scan_iter("dedup:*")]
    assert len(marks) == 1  # only the admitted job's


def test_a_lost_release_is_reconciled_against_the_database():
    api_key, key = make_key(max_concurrent_jobs=2)
    client = client_for(key)
    ids = [post(client, {"query": f"job {i}"}).json()["jobId"] for i in range(2)]
    # The job ended but its slot was never given back (a worker killed between the two writes).
    Job.objects.filter(id=ids[0]).update(state=Job.State.FAILED, finished_at=timezone.now())
    assert redis_client().zcard(quotas.JOBS_KEY.format(api_key.pk)) == 2
    assert post(client, {"query": "job 2"}).status_code == 202
    assert_refused(post(client, {"query": "job 3"}), 429, "rate_limit_error", "concurrency_limit")


def test_a_slot_without_a_job_row_is_freed_only_after_a_grace(monkeypatch):
    api_key, _ = make_key(max_concurrent_jobs=1)
    redis = redis_client()
    quotas.quota_jobs_acquire(api_key=api_key, job_id="00000000-0000-4000-8000-000000000001")
    assert quotas.quota_jobs_reconcile(api_key=api_key, redis=redis, force=True) == 0
    monkeypatch.setattr(quotas, "MISSING_JOB_GRACE_MS", 0)
    time.sleep(0.01)
    assert quotas.quota_jobs_reconcile(api_key=api_key, redis=redis, force=True) == 1


def test_concurrency_survives_a_redis_flush():
    _, key = make_key(max_concurrent_jobs=2)
    client = client_for(key)
    post(client, {"query": "a"})
    post(client, {"query": "b"})
    redis_client().flushdb()
    # The set is rebuilt from the database: two jobs are still queued.
    assert_refused(post(client, {"query": "c"}), 429, "rate_limit_error", "concurrency_limit")


def test_concurrency_limit_is_exact_under_a_threaded_burst():
    api_key, _ = make_key(max_concurrent_jobs=50)
    barrier = threading.Barrier(40)

    def acquire(i: int) -> int:
        barrier.wait(timeout=10)
        admitted = 0
        for j in range(5):
            try:
                quotas.quota_jobs_acquire(api_key=api_key, job_id=f"00000000-0000-4000-8000-{i:06d}{j:06d}")
                admitted += 1
            except quotas.QuotaExceeded:
                pass
        return admitted

    with ThreadPoolExecutor(max_workers=40) as pool:
        assert sum(pool.map(acquire, range(40))) == 50


def test_unlimited_keys_are_not_tracked():
    api_key, key = make_key()
    post(client_for(key), {"query": "free"})
    assert redis_client().exists(quotas.JOBS_KEY.format(api_key.pk)) == 0


# --- budget ----------------------------------------------------------------------------------------


def test_budget_refuses_new_jobs_but_serves_cache_hits(fake_claude):
    api_key, key = make_key(monthly_budget_usd=Decimal("0.50"))
    client = client_for(key)
    job_id = post(client, {"query": "costly"}).json()["jobId"]
    run_queued_jobs()
    Job.objects.filter(id=job_id).update(cost_usd=Decimal("0.50"))
    assert quotas.api_key_month_spend(api_key=api_key) == Decimal("0.50")

    response = post(client, {"query": "new question"})
    error = assert_refused(response, 429, "rate_limit_error", "budget_exceeded")
    assert error["details"]["spentUsd"] == 0.5 and error["details"]["budgetUsd"] == 0.5
    assert error["details"]["resetsAt"].endswith("T00:00:00Z")
    assert int(response["Retry-After"]) > 0
    cached = post(client, {"query": "costly"})
    assert cached.status_code == 200 and cached.json()["cached"] is True
    assert Job.objects.count() == 1


def test_spend_counts_only_jobs_the_key_created_this_month():
    api_key, key = make_key()
    _, other_key = make_key()
    client, other = client_for(key), client_for(other_key)
    mine = post(client, {"query": "mine"}).json()["jobId"]
    old = post(client, {"query": "last month"}).json()["jobId"]
    theirs = post(other, {"query": "theirs"}).json()["jobId"]
    Job.objects.filter(id=mine).update(cost_usd=Decimal("0.25"))
    Job.objects.filter(id=old).update(cost_usd=Decimal("5"))
    Job.objects.filter(id=theirs).update(cost_usd=Decimal("7"))
    QueryRequest.objects.filter(job_id=old).update(created_at=quotas.month_start() - timedelta(seconds=1))
    assert quotas.api_key_month_spend(api_key=api_key) == Decimal("0.25")


def test_a_queued_job_whose_creator_went_over_budget_fails_as_budget_exceeded(fake_claude):
    api_key, key = make_key(monthly_budget_usd=Decimal("1.00"))
    client = client_for(key)
    spent = post(client, {"query": "spent"}).json()["jobId"]
    waiting = post(client, {"query": "waiting"}).json()["jobId"]
    Job.objects.filter(id=spent).update(
        state=Job.State.COMPLETED, cost_usd=Decimal("1.20"), finished_at=timezone.now()
    )
    run_queued_jobs()
    job = Job.objects.get(id=waiting)
    assert job.state == Job.State.FAILED and job.error_type == Job.ErrorType.BUDGET_EXCEEDED
    assert job.cli_pid is None  # the CLI never started
    body = client.get(f"/api/query/{waiting}").json()
    assert body["error"]["type"] == "budget_exceeded"


def test_budget_with_the_real_cli_cost(real_claude):
    """The spend is what the real CLI reported as total_cost_usd (1000 output tokens cost about $0.025)."""
    api_key, key = make_key(monthly_budget_usd=Decimal("0.01"))
    client = client_for(key)
    question = "[[mock:big=4000]] Tell me a lot."
    job_id = post(client, {"query": question}).json()["jobId"]
    assert run_queued_jobs() == 1
    job = Job.objects.get(id=job_id)
    assert job.state == Job.State.COMPLETED and job.cost_usd > Decimal("0.01")
    assert quotas.api_key_month_spend(api_key=api_key) == job.cost_usd
    assert_refused(post(client, {"query": "Another one"}), 429, "rate_limit_error", "budget_exceeded")
    assert post(client, {"query": question}).status_code == 200
    assert len(real_claude.message_requests()) == 1


def test_spend_is_shown_in_the_admin(admin_client):
    api_key, key = make_key(monthly_budget_usd=Decimal("3"))
    job_id = post(client_for(key), {"query": "q"}).json()["jobId"]
    Job.objects.filter(id=job_id).update(cost_usd=Decimal("1.234567"))
    listing = admin_client.get("/admin/queries/apikey/")
    assert listing.status_code == 200
    assert "$1.2346 of $3.00" in listing.content.decode()
    page = admin_client.get(f"/admin/queries/apikey/{api_key.pk}/change/")
    assert "$1.2346 of $3.00" in page.content.decode()


# --- what a key may ask for ------------------------------------------------------------------------


def test_priorities_a_key_may_not_use_are_403():
    _, key = make_key(allowed_priorities=["low", "normal"])
    client = client_for(key)
    error = assert_refused(
        post(client, {"query": "x", "priority": "high"}), 403, "permission_error", "priority_not_allowed"
    )
    assert error["details"]["allowed"] == ["low", "normal"]
    assert post(client, {"query": "x", "priority": "low"}).status_code == 202
    assert QueryRequest.objects.count() == 1


def test_models_a_key_may_not_use_are_403():
    _, key = make_key(allowed_models=["haiku"])
    client = client_for(key)
    assert_refused(
        post(client, {"query": "x", "model": "opus"}), 403, "permission_error", "model_not_allowed"
    )
    error = assert_refused(post(client, {"query": "x"}), 403, "permission_error", "model_not_allowed")
    assert "must name a model" in error["message"]
    assert post(client, {"query": "x", "model": "haiku"}).status_code == 202


def test_an_expired_key_is_401():
    _, key = make_key(expires_at=timezone.now() - timedelta(seconds=1))
    response = post(client_for(key), {"query": "x"})
    assert_refused(response, 401, "authentication_error")
    _, fresh = make_key(expires_at=timezone.now() + timedelta(days=1))
    assert post(client_for(fresh), {"query": "x"}).status_code == 202


def test_create_api_key_command_sets_limits():
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command(
        "create_api_key",
        "ci",
        "--rate-limit=10",
        "--max-concurrent=2",
        "--monthly-budget=12.5",
        "--priorities=low,normal",
        "--models=haiku,sonnet",
        "--expires-in-days=30",
        stdout=out,
        stderr=StringIO(),
    )
    key = out.getvalue().strip().splitlines()[-1]
    row = ApiKey.objects.get(key_hash=ApiKey.hash_key(key))
    assert (row.rate_limit_per_minute, row.max_concurrent_jobs, row.monthly_budget_usd) == (
        10,
        2,
        Decimal("12.5"),
    )
    assert row.allowed_priorities == ["low", "normal"] and row.allowed_models == ["haiku", "sonnet"]
    assert timedelta(days=29) < row.expires_at - timezone.now() <= timedelta(days=30)


# --- 200 concurrent requests against the real server -----------------------------------------------


def burst(url: str, key: str, n: int, same_query: bool = False) -> list[requests.Response]:
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=n))
    session.headers["Authorization"] = f"Bearer {key}"
    barrier = threading.Barrier(n)

    def one(i: int) -> requests.Response:
        barrier.wait(timeout=30)
        query = "same question" if same_query else f"burst question {i}"
        return session.post(f"{url}/api/query", json={"query": query}, timeout=60)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


@pytest.mark.e2e
def test_200_concurrent_requests_against_a_rate_limit_of_50_admit_exactly_50(web_server):
    _, key = make_key(rate_limit_per_minute=50)
    responses = burst(web_server, key, 200)
    codes = [r.status_code for r in responses]
    assert codes.count(202) == 50 and codes.count(429) == 150
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["details"]["reason"] == "rate_limit" for r in refused)
    assert all(1 <= int(r.headers["Retry-After"]) <= 60 for r in refused)
    assert Job.objects.count() == 50 and QueryRequest.objects.count() == 50


@pytest.mark.e2e
def test_200_concurrent_requests_against_a_concurrency_limit_of_50_admit_exactly_50(web_server):
    _, key = make_key(max_concurrent_jobs=50)
    responses = burst(web_server, key, 200)
    codes = [r.status_code for r in responses]
    assert codes.count(202) == 50 and codes.count(429) == 150
    assert all(
        r.json()["error"]["details"]["reason"] == "concurrency_limit"
        for r in responses
        if r.status_code == 429
    )
    assert Job.objects.filter(state=Job.State.QUEUED).count() == 50
