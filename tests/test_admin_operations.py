"""Operators' actions on jobs and the cache: cancel, retry, reconcile, purge; as services and in the admin.

The real Redis and PostgreSQL throughout; the real CLI against the mock Anthropic API wherever a job
runs (in this process through rq's SimpleWorker, or in a real worker process for a running CLI).
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta

import django_rq
import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from redis import Redis
from rq import Worker
from rq.executions import prepare_execution
from rq.job import Job as RqJob

from core.redis import redis_client
from queries import services
from queries.models import ApiKey, Job, QueryRequest
from tests.support.factories import JobFactory, RequestFactory, failed_job
from tests.support.pipeline import (
    OTHER_KEYS,
    QUESTION,
    plain_hash,
    run_queued_jobs,
    seed_cache,
    seed_other_keys,
)
from tests.support.processes import group_members
from tests.support.receivers import NOWHERE, Receiver
from tests.support.waiting import wait_for
from webhooks.models import WebhookDelivery

# Transactional: django-rq enqueues when the transaction commits, so the queues see nothing otherwise.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_db")]


def queue_length(priority_queue: str = "default") -> int:
    return django_rq.get_queue(priority_queue).count


@pytest.fixture
def operator(db) -> Client:
    user = User.objects.create_superuser("operator", "op@example.com", "pw")
    client = Client()
    client.force_login(user)
    client.user = user
    return client


def act(client: Client, model: str, action: str, ids: list) -> object:
    return client.post(
        f"/admin/queries/{model}/",
        {"action": action, "_selected_action": [str(i) for i in ids], "index": 0},
        follow=True,
    )


def page_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --- cancel ------------------------------------------------------------------------------------------


def test_cancelling_a_queued_job_settles_it_removes_it_from_its_queue_and_releases_the_mark(settings, mock):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    submission = services.query_submit(api_key=None, query=QUESTION, webhook_url=NOWHERE)
    job_id = submission.job_id
    redis = redis_client()
    assert redis.get(f"dedup:{plain_hash()}").decode() == str(job_id)
    assert queue_length() == 1

    assert services.job_cancel(job_id=job_id, reason="not needed") == "cancelled"

    job = Job.objects.get(id=job_id)
    assert job.state == Job.State.CANCELLED and job.error_type == "cancelled"
    assert job.error_message == "not needed" and job.progress == 100 and job.finished_at is not None
    assert queue_length() == 0
    assert redis.get(f"dedup:{plain_hash()}") is None
    delivery = WebhookDelivery.objects.get(request_id=submission.request_id)
    body = json.loads(delivery.body)
    assert delivery.event == "query.failed"
    assert body["data"]["state"] == "cancelled" and body["data"]["error"]["type"] == "cancelled"
    # Nothing runs it any more, and the next identical submission makes a new job.
    assert run_queued_jobs() == 0 and mock.message_requests() == []
    again = services.query_submit(api_key=None, query=QUESTION)
    assert again.outcome == "queued" and again.job_id != job_id


def test_cancel_refuses_finished_and_unknown_jobs():
    done = JobFactory()
    with pytest.raises(services.OperationRefused, match="only queued or running"):
        services.job_cancel(job_id=done.id)
    with pytest.raises(services.OperationRefused, match="No job"):
        services.job_cancel(job_id="00000000-0000-0000-0000-000000000000")
    with pytest.raises(services.OperationRefused, match="No job"):
        services.job_cancel(job_id="not-a-uuid")


@pytest.mark.e2e
def test_cancelling_a_running_job_kills_the_real_cli_and_its_callers_webhook_says_failed(worker_process):
    worker_process(env={"WEBHOOK_ALLOW_PRIVATE": "true"})
    with Receiver() as receiver:
        submission = services.query_submit(
            api_key=None, query=f"[[mock:sleep=60]] {QUESTION}", webhook_url=receiver.url()
        )
        job = wait_for(
            lambda: Job.objects.filter(id=submission.job_id, cli_pid__isnull=False).first(),
            timeout=30,
            message="the CLI to start",
        )
        assert job.state == Job.State.RUNNING and group_members(job.cli_pid)
        # reconcile leaves it alone: the live worker reports executing it (the host check is taken out
        # of play by naming another host).
        Job.objects.filter(id=job.id).update(worker_name="another-host:1")
        assert services.job_reconcile_stale(grace_seconds=0) == []

        started = time.monotonic()
        out = call_command_output("cancel_job", str(job.id))
        job.refresh_from_db()
        assert job.state == Job.State.CANCELLED and job.error_type == "cancelled", job.error_message
        assert time.monotonic() - started < 5
        assert f"Job {job.id} cancelled" in out
        assert group_members(job.cli_pid) == []
        assert redis_client().get(f"dedup:{plain_hash(job.query)}") is None

        [got] = receiver.wait_for(1)
        payload = json.loads(got.body)
        assert payload["type"] == "query.failed"
        assert payload["data"]["state"] == "cancelled" and payload["data"]["error"]["type"] == "cancelled"


def call_command_output(*args: str) -> str:
    import io

    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


# --- retry -------------------------------------------------------------------------------------------


def test_retrying_a_failed_job_runs_it_again_as_a_new_job_and_keeps_the_old_record(real_claude):
    old = failed_job(query=QUESTION, normalized_query=services.normalize_query(QUESTION), hash=plain_hash())
    request = RequestFactory(job=old)

    retried = services.job_retry(job_id=old.id)

    assert retried.created and retried.job.id != old.id and retried.job.retry_of_id == old.id
    assert retried.job.state == Job.State.QUEUED and retried.job.hash == old.hash
    assert redis_client().get(f"dedup:{old.hash}").decode() == str(retried.job.id)
    assert run_queued_jobs() == 1
    new = Job.objects.get(id=retried.job.id)
    assert new.state == Job.State.COMPLETED and new.response == "4" and new.cost_usd > 0
    old.refresh_from_db()
    assert old.state == Job.State.FAILED and old.error_type == "worker_lost"
    # The caller's request stays with the job that answered it; the answer is cached for the next one.
    request.refresh_from_db()
    assert request.job_id == old.id
    assert services.cache_get(query_hash=old.hash)["jobId"] == str(new.id)
    assert services.query_submit(api_key=None, query=QUESTION).outcome == "cached"

    with pytest.raises(services.OperationRefused, match="already retried"):
        services.job_retry(job_id=old.id)
    with pytest.raises(services.OperationRefused, match="only failed or cancelled"):
        services.job_retry(job_id=new.id)


def test_a_retry_joins_an_identical_job_in_flight_and_submissions_join_a_retry():
    old = failed_job(query=QUESTION, hash=plain_hash())
    in_flight = services.query_submit(api_key=None, query=QUESTION)
    joined = services.job_retry(job_id=old.id)
    assert not joined.created and joined.job.id == in_flight.job_id
    assert Job.objects.count() == 2 and queue_length() == 1

    services.job_cancel(job_id=in_flight.job_id)
    retried = services.job_retry(job_id=old.id)
    assert retried.created
    submission = services.query_submit(api_key=None, query=f"  {QUESTION.upper()} ")
    assert submission.outcome == "deduplicated" and submission.job_id == retried.job.id


def test_retry_failed_takes_recent_failures_once_and_leaves_cancelled_jobs():
    now = timezone.now()
    recent = failed_job(finished_at=now - timedelta(minutes=10))
    old = failed_job(finished_at=now - timedelta(hours=3))
    cancelled = failed_job(state=Job.State.CANCELLED, error_type="cancelled", finished_at=now)

    outcomes = services.jobs_retry_failed(since=now - timedelta(hours=1))

    assert [(job.id, retried.created) for job, retried, _ in outcomes] == [(recent.id, True)]
    assert services.jobs_retry_failed(since=now - timedelta(hours=1)) == []
    assert not old.retries.exists() and not cancelled.retries.exists()


# --- reconcile ---------------------------------------------------------------------------------------


def test_reconcile_settles_running_jobs_whose_worker_is_gone_and_spares_live_ones():
    long_ago = timezone.now() - timedelta(minutes=5)
    orphan = JobFactory(
        state=Job.State.RUNNING, started_at=long_ago, finished_at=None, worker_name="gone-host:4242"
    )
    on_live_worker = JobFactory(
        state=Job.State.RUNNING, started_at=long_ago, finished_at=None, worker_name="other-host:1"
    )
    here_alive = JobFactory(
        state=Job.State.RUNNING,
        started_at=long_ago,
        finished_at=None,
        worker_name=f"{socket.gethostname()}:{os.getpid()}",
    )
    just_started = JobFactory(
        state=Job.State.RUNNING, started_at=timezone.now(), finished_at=None, worker_name="gone-host:1"
    )
    RequestFactory(job=orphan, webhook_url=NOWHERE)
    # A live worker (registered, heartbeating) that is executing on_live_worker's rq job.
    queue = django_rq.get_queue("default")
    worker = Worker([queue], connection=redis_client(), name="live-worker")
    worker.register_birth()
    rq_job = RqJob.create(
        "queries.tasks.run_job",
        args=[str(on_live_worker.id)],
        id=str(on_live_worker.id),
        connection=queue.connection,
    )
    rq_job.save()
    prepare_execution(worker, rq_job)

    out = call_command_output("reconcile", "--retry-lost")

    orphan.refresh_from_db()
    assert orphan.state == Job.State.FAILED and orphan.error_type == "worker_lost"
    [retry] = orphan.retries.all()
    assert retry.state == Job.State.QUEUED and queue_length() == 1
    assert f"job {orphan.id}: its worker is gone; failed as worker_lost, retried as {retry.id}" in out
    assert WebhookDelivery.objects.get(request__job=orphan).event == "query.failed"
    for job in (on_live_worker, here_alive, just_started):
        job.refresh_from_db()
        assert job.state == Job.State.RUNNING


def test_reconcile_queues_again_a_queued_job_whose_rq_entry_was_lost():
    submission = services.query_submit(api_key=None, query=QUESTION)
    Job.objects.filter(id=submission.job_id).update(created_at=timezone.now() - timedelta(minutes=5))
    redis_client().flushdb()  # Redis lost its data: the queue entry and the in-flight mark are gone

    out = call_command_output("reconcile")

    assert f"job {submission.job_id}: queued but missing from its rq queue; queued again" in out
    assert queue_length() == 1
    assert redis_client().get(f"dedup:{plain_hash()}").decode() == str(submission.job_id)
    assert "queued again" not in call_command_output("reconcile")


# --- purge -------------------------------------------------------------------------------------------


@pytest.fixture
def no_keys_command(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("KEYS blocks Redis: the purge must use SCAN")

    monkeypatch.setattr(Redis, "keys", refuse)


def test_purge_all_deletes_every_cached_answer_in_batches_and_nothing_else(no_keys_command):
    seed_cache(1234)
    seed_other_keys()

    assert services.cache_purge_all(batch=100) == 1234

    redis = redis_client()
    assert list(redis.scan_iter(match="claude:*")) == []
    assert all(redis.get(key) == b"keep" for key in OTHER_KEYS)


def test_purge_by_hash_deletes_that_answer_only():
    hashes = seed_cache(3)
    assert services.cache_purge(query_hashes=[hashes[1].upper()]) == 1
    assert services.cache_purge(query_hashes=[hashes[1]]) == 0
    redis = redis_client()
    assert redis.exists(f"claude:{hashes[0]}", f"claude:{hashes[2]}") == 2
    with pytest.raises(ValueError, match="not a query hash"):
        services.cache_purge(query_hashes=["claude:*"])


# --- the admin's actions -----------------------------------------------------------------------------


def test_admin_retry_action_makes_a_new_job_reports_it_and_logs_it(operator, real_claude):
    old = failed_job(query=QUESTION, hash=plain_hash())
    response = act(operator, "job", "retry", [old.id])
    [retry] = old.retries.all()
    assert any(f"{old.id} → {retry.id}" in m for m in page_messages(response))
    entry = LogEntry.objects.get(object_id=str(old.id))
    assert entry.user == operator.user and entry.change_message == f"Retried as job {retry.id}."
    run_queued_jobs()
    retry.refresh_from_db()
    assert retry.state == Job.State.COMPLETED and retry.response == "4"

    again = act(operator, "job", "retry", [old.id])
    assert any("already retried" in m for m in page_messages(again))


def test_admin_cancel_and_purge_actions_call_the_services_and_log(operator):
    submission = services.query_submit(api_key=None, query=QUESTION)
    response = act(operator, "job", "cancel", [submission.job_id])
    assert any("Cancelled 1 queued job" in m for m in page_messages(response))
    assert Job.objects.get(id=submission.job_id).state == Job.State.CANCELLED
    assert LogEntry.objects.filter(object_id=str(submission.job_id), change_message="Cancelled.").exists()

    done = JobFactory(hash=plain_hash())
    services.cache_put(job=done)
    redis_client().set("dedup:other", "keep")
    response = act(operator, "job", "purge_cache", [done.id])
    assert any("Purged 1 cached answer" in m for m in page_messages(response))
    assert services.cache_get(query_hash=done.hash) is None and redis_client().get("dedup:other") == b"keep"
    assert LogEntry.objects.filter(object_id=str(done.id)).exists()


def test_admin_redeliver_action_sends_the_webhook_again(operator, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    with Receiver() as receiver:
        request = RequestFactory(webhook_url=receiver.url())
        services.job_finished(job=request.job)
        run_queued_jobs()
        receiver.wait_for(1)
        response = act(operator, "queryrequest", "redeliver_webhooks", [request.id])
        assert any("Queued 1 webhook delivery again" in m for m in page_messages(response))
        run_queued_jobs()
        first, second = receiver.wait_for(2)
    assert first.body == second.body and first.headers["webhook-id"] == second.headers["webhook-id"]
    assert LogEntry.objects.filter(object_id=str(request.id)).exists()


def test_staff_without_the_change_permission_see_records_but_no_actions(db):
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_job", "view_queryrequest"]))
    client = Client()
    client.force_login(user)
    job = failed_job()
    page = client.get("/admin/queries/job/")
    assert page.status_code == 200 and b'name="action"' not in page.content
    act(client, "job", "retry", [job.id])
    assert not job.retries.exists()
    assert client.get(f"/admin/queries/job/{job.id}/change/").status_code == 200
    assert client.post("/admin/cache/purge-all/", {"confirm": "yes"}).status_code == 302
    # The purge was refused: the cache page is only readable without the permission.
    assert b"purge-all-link" not in client.get("/admin/cache/").content


def test_cache_page_purges_all_only_after_confirmation_and_purges_by_hash(operator, no_keys_command):
    hashes = seed_cache(5)
    seed_other_keys()
    page = operator.get("/admin/cache/")
    assert page.context["cache"]["entries"] == 5 and page.context["cache"]["memoryBytes"] > 0

    confirm = operator.get("/admin/cache/purge-all/")
    assert b"Yes, purge them all" in confirm.content and confirm.context["cache"]["entries"] == 5
    assert len(list(redis_client().scan_iter(match="claude:*"))) == 5  # asking deletes nothing

    done = operator.post("/admin/cache/purge-all/", {"confirm": "yes"}, follow=True)
    assert "Purged all cached answers: 5 entries deleted." in page_messages(done)
    assert list(redis_client().scan_iter(match="claude:*")) == []
    assert all(redis_client().get(key) == b"keep" for key in OTHER_KEYS)
    assert LogEntry.objects.filter(object_repr="cache", change_message__contains="5 entries").exists()

    services.cache_put(job=JobFactory(hash=hashes[0]))
    purged = operator.post("/admin/cache/", {"hash": hashes[0]}, follow=True)
    assert f"Purged the cached answer of {hashes[0]}." in page_messages(purged)
    missing = operator.post("/admin/cache/", {"hash": hashes[0]}, follow=True)
    assert f"No cached answer for {hashes[0]}." in page_messages(missing)
    bad = operator.post("/admin/cache/", {"hash": "claude:*"}, follow=True)
    assert any("not a query hash" in m for m in page_messages(bad))


# --- history: search, filters, detail pages ----------------------------------------------------------


def test_job_search_finds_by_job_id_request_id_hash_and_words(operator):
    target = RequestFactory(job=JobFactory(query="Summarise the quarterly report"))
    RequestFactory.create_batch(3)

    def found(term: str) -> list:
        response = operator.get("/admin/queries/job/", {"q": term})
        return [job.id for job in response.context["cl"].result_list]

    assert found(str(target.job_id)) == [target.job_id]
    assert found(str(target.id)) == [target.job_id]
    assert found(target.job.hash) == [target.job_id]
    assert found("QUARTERLY") == [target.job_id]

    requests = operator.get("/admin/queries/queryrequest/", {"q": str(target.job_id)})
    assert [r.id for r in requests.context["cl"].result_list] == [target.id]


def test_job_filters_answer_operators_questions(operator):
    now = timezone.now()
    failed_recently = failed_job(finished_at=now - timedelta(minutes=20))
    failed_job(finished_at=now - timedelta(hours=2))
    slow = JobFactory(duration_ms=45_000)
    timed_out = failed_job(error_type="cli_timeout")
    key, _ = services.api_key_create(name="team-a")
    mine = RequestFactory(api_key=key).job

    def listed(**params: str) -> set:
        return {job.id for job in operator.get("/admin/queries/job/", params).context["cl"].result_list}

    assert listed(trouble="failed_hour") == {failed_recently.id, timed_out.id}
    assert listed(trouble="slow") == {slow.id, timed_out.id}
    assert listed(api_key=str(key.pk)) == {mine.id}


def test_job_page_shows_answer_cli_json_costs_timings_requests_and_deliveries(operator):
    job = JobFactory(
        response="4",
        cli_output={"type": "result", "result": "4", "total_cost_usd": 0.0012},
        input_tokens=12,
        output_tokens=1,
        duration_ms=640,
        started_at=timezone.now() - timedelta(seconds=3),
    )
    request = RequestFactory(job=job, webhook_url=NOWHERE)
    WebhookDelivery.objects.create(
        request=request, url=request.webhook_url, event="query.completed", body="{}", max_attempts=8
    )
    page = operator.get(f"/admin/queries/job/{job.id}/change/").content.decode()
    for text in (
        "&quot;total_cost_usd&quot;: 0.0012",
        "0.001000",
        "640",
        "Waited in queue",
        str(request.id),
        "query.completed",
    ):
        assert text in page, text


def test_changelists_never_count_the_whole_table(operator, django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    RequestFactory.create_batch(3)
    with CaptureQueriesContext(connection) as queries:
        assert operator.get("/admin/queries/job/").status_code == 200
        assert operator.get("/admin/queries/queryrequest/").status_code == 200
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts


# --- API keys ----------------------------------------------------------------------------------------


def test_adding_a_key_in_the_admin_shows_the_plaintext_once_and_stores_only_its_hash(operator):
    response = operator.post(
        "/admin/queries/apikey/add/",
        {
            "name": "ci-bot",
            "expires_at_0": "",
            "expires_at_1": "",
            "allowed_models": "",
            "rate_limit_per_minute": "30",
        },
    )
    assert response.status_code == 200, response.content[:2000]
    assert "no-store" in response["Cache-Control"]
    key = response.context["plaintext_key"]
    row = ApiKey.objects.get(name="ci-bot")
    assert key.startswith("cgw_") and row.key_hash == ApiKey.hash_key(key) and row.rate_limit_per_minute == 30
    assert key in response.content.decode()
    assert key not in operator.get(f"/admin/queries/apikey/{row.pk}/change/").content.decode()
    assert LogEntry.objects.filter(object_id=str(row.pk), action_flag=1).exists()

    api = Client()
    assert (
        api.get(
            "/api/query/00000000-0000-0000-0000-000000000000", HTTP_AUTHORIZATION=f"Bearer {key}"
        ).status_code
        == 404
    )

    act(operator, "apikey", "revoke", [row.pk])
    row.refresh_from_db()
    assert not row.is_active
    assert LogEntry.objects.filter(object_id=str(row.pk), change_message="Revoked.").exists()
    assert (
        api.get(
            "/api/query/00000000-0000-0000-0000-000000000000", HTTP_AUTHORIZATION=f"Bearer {key}"
        ).status_code
        == 401
    )


def test_key_list_shows_last_use_and_usage(operator):
    key, _ = services.api_key_create(name="team-b")
    RequestFactory.create_batch(2, api_key=key)
    RequestFactory(api_key=key, outcome=QueryRequest.Outcome.CACHED)
    page = operator.get("/admin/queries/apikey/")
    [row] = [k for k in page.context["cl"].result_list if k.pk == key.pk]
    assert row.recent_requests == 3
    detail = operator.get(f"/admin/queries/apikey/{key.pk}/change/").content.decode()
    assert "Queued (new job): 2" in detail and "Answered from cache: 1" in detail


# --- who may see it ----------------------------------------------------------------------------------


ADMIN_PAGES = [
    "/admin/",
    "/admin/cache/",
    "/admin/cache/purge-all/",
    "/admin/queries/job/",
    "/admin/queries/apikey/add/",
    "/admin/rq/",
    "/admin/rq/queues/0/",
    "/admin/rq/workers/0/",
    "/admin/django_rq/dashboard/",
]


@pytest.mark.parametrize("who", ["anonymous", "non-staff"])
def test_no_admin_page_serves_anyone_but_staff(who):
    client = Client()
    if who == "non-staff":
        client.force_login(User.objects.create_user("someone", password="pw"))
    seed_cache(2)
    for url in ADMIN_PAGES:
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    assert client.post("/admin/cache/purge-all/", {"confirm": "yes"}).status_code == 302
    assert len(list(redis_client().scan_iter(match="claude:*"))) == 2
    assert client.get("/admin/rq/stats.json").status_code == 401
