"""Webhook delivery: who gets what, signing, retries, records and the sweeper.

Receivers are real HTTP servers on loopback (WEBHOOK_ALLOW_PRIVATE is on here; the SSRF policy is
tested in test_webhooks_ssrf.py). Jobs run the real CLI against the mock Anthropic API where the
path involves it; the retry schedule is checked with a controlled clock.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.db.models import F
from django.utils import timezone
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from core.redis import redis_client
from queries import services as query_services
from queries.models import Job, QueryRequest
from tests.support import REPO
from tests.support.factories import JobFactory, RequestFactory
from tests.support.pipeline import run_queued_jobs
from tests.support.receivers import HANG, NOWHERE, SECRET, Receiver, Reply, verify
from webhooks import services, signing
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSecret

T0 = datetime(2030, 1, 7, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def hooks(settings, redis_db):
    """Webhooks to loopback receivers, signed with a known WEBHOOK_SECRET, on the default schedule.

    Deliveries use Redis: their tries are rq jobs, their outcomes counted in the metrics."""
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_SECRET = SECRET
    settings.WEBHOOK_TIMEOUT = 5.0
    settings.WEBHOOK_RETRY_SCHEDULE = [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    return settings


def deliver(request: QueryRequest) -> WebhookDelivery:
    services.webhook_on_job_finished(job=request.job)
    return WebhookDelivery.objects.get(request=request)


def attempt_now(delivery: WebhookDelivery) -> WebhookAttempt | None:
    attempt = services.webhook_delivery_attempt(delivery_id=delivery.id)
    delivery.refresh_from_db()
    return attempt


# --- who gets what, through the real pipeline ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_completed_job_is_delivered_signed_on_the_first_try(hooks, real_claude, client):
    with Receiver() as receiver:
        response = client.post(
            "/api/query",
            {"query": "What is 2+2?", "webhookUrl": receiver.url(), "metadata": {"ticket": 7}},
            format="json",
        )
        assert response.status_code == 202, response.content
        run_queued_jobs()
        [got] = receiver.wait_for(1)

    payload = verify(got)
    assert got.method == "POST" and got.path == "/hook"
    assert got.headers["content-type"] == "application/json"
    assert payload["type"] == "query.completed"
    assert datetime.fromisoformat(payload["timestamp"]) <= timezone.now()
    data = payload["data"]
    assert data["requestId"] == response.json()["requestId"] and data["jobId"] == response.json()["jobId"]
    assert data["state"] == "completed" and data["error"] is None
    assert data["result"]["response"] == "4" and data["result"]["usage"]["inputTokens"] > 0
    assert data["metadata"] == {"ticket": 7}

    delivery = WebhookDelivery.objects.get()
    assert got.headers["webhook-id"] == delivery.webhook_id
    assert delivery.state == WebhookDelivery.State.SUCCEEDED and delivery.attempts == 1
    assert delivery.next_attempt_at is None and delivery.finished_at is not None
    [attempt] = delivery.attempt_rows.all()
    assert attempt.status_code == 200 and attempt.error == "" and attempt.response_excerpt == "ok"
    assert attempt.address == "127.0.0.1" and attempt.finished_at >= attempt.started_at
    assert attempt.webhook_timestamp == int(got.headers["webhook-timestamp"])


@pytest.mark.django_db(transaction=True)
def test_three_deduplicated_callers_each_receive_their_own_delivery(hooks, real_claude, client):
    with Receiver() as receiver:
        responses = [
            client.post(
                "/api/query",
                {
                    "query": "Name a colour.",
                    "webhookUrl": receiver.url(f"/caller{i}"),
                    "metadata": {"caller": i},
                },
                format="json",
            )
            for i in range(3)
        ]
        assert [r.json().get("deduplicated") for r in responses] == [None, True, True]
        run_queued_jobs()
        received = receiver.wait_for(3)
    assert len(received) == 3 and len(real_claude.message_requests()) == 1
    by_path = {r.path: verify(r) for r in received}
    assert sorted(by_path) == ["/caller0", "/caller1", "/caller2"]
    for i, response in enumerate(responses):
        data = by_path[f"/caller{i}"]["data"]
        assert data["requestId"] == response.json()["requestId"]
        assert data["jobId"] == responses[0].json()["jobId"]
        assert data["metadata"] == {"caller": i} and data["state"] == "completed"
    assert len({r.headers["webhook-id"] for r in received}) == 3
    assert set(WebhookDelivery.objects.values_list("state", flat=True)) == {"succeeded"}


@pytest.mark.django_db(transaction=True)
def test_a_cache_hit_is_delivered_at_once(hooks, real_claude, client):
    first = client.post("/api/query", {"query": "What is 2+2?"}, format="json").json()
    run_queued_jobs()
    with Receiver() as receiver:
        response = client.post(
            "/api/query", {"query": "what is 2+2? ", "webhookUrl": receiver.url()}, format="json"
        )
        assert response.status_code == 200 and response.json()["cached"] is True
        # The delivery exists as soon as the cached answer is recorded, due now.
        delivery = WebhookDelivery.objects.get(request_id=response.json()["requestId"])
        assert delivery.event == "query.completed" and delivery.next_attempt_at <= timezone.now()
        run_queued_jobs()
        [got] = receiver.wait_for(1)
    data = verify(got)["data"]
    assert data["jobId"] == first["jobId"] and data["state"] == "completed"
    assert data["result"] == response.json()["result"]
    assert WebhookDelivery.objects.get(id=delivery.id).state == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_a_failed_job_is_delivered_as_query_failed(hooks, real_claude, client):
    with Receiver() as receiver:
        response = client.post(
            "/api/query", {"query": "[[mock:error=400]] please", "webhookUrl": receiver.url()}, format="json"
        )
        run_queued_jobs()
        [got] = receiver.wait_for(1)
    payload = verify(got)
    assert payload["type"] == "query.failed"
    data = payload["data"]
    assert data["jobId"] == response.json()["jobId"] and data["state"] == "failed"
    assert (
        data["result"] is None and data["error"]["type"] == "cli_error" and "400" in data["error"]["message"]
    )


@pytest.mark.django_db(transaction=True)
def test_a_request_without_a_webhook_url_gets_no_delivery(hooks, real_claude, client):
    client.post("/api/query", {"query": "What is 2+2?"}, format="json")
    run_queued_jobs()
    assert WebhookDelivery.objects.count() == 0


def test_a_joined_request_racing_its_job_gets_exactly_one_delivery(hooks, db):
    request = RequestFactory(outcome=QueryRequest.Outcome.DEDUPLICATED, webhook_url=NOWHERE)
    services.webhook_on_request(request=request)
    services.webhook_on_job_finished(job=request.job)
    services.webhook_on_request(request=request)
    services.webhook_on_job_finished(job=request.job)
    assert WebhookDelivery.objects.filter(request=request).count() == 1


def test_a_request_whose_job_is_still_running_waits_for_the_job(hooks, db):
    request = RequestFactory(
        outcome=QueryRequest.Outcome.DEDUPLICATED,
        job=JobFactory(state=Job.State.RUNNING, finished_at=None),
        webhook_url=NOWHERE,
    )
    services.webhook_on_request(request=request)
    assert not WebhookDelivery.objects.exists()
    Job.objects.filter(id=request.job_id).update(state=Job.State.COMPLETED, finished_at=timezone.now())
    request.job.refresh_from_db()
    services.webhook_on_job_finished(job=request.job)
    assert WebhookDelivery.objects.filter(request=request).count() == 1


def test_a_worker_lost_job_is_delivered_as_failed(hooks, db):
    job = JobFactory(state=Job.State.RUNNING, finished_at=None, response="")
    request = RequestFactory(job=job, webhook_url=NOWHERE)
    assert query_services.job_worker_lost(job_id=job.id, reason="The worker process died.")
    body = json.loads(WebhookDelivery.objects.get(request=request).body)
    assert body["type"] == "query.failed" and body["data"]["error"]["type"] == "worker_lost"


# --- retries, with a controlled clock --------------------------------------------------------------


def test_500_500_200_is_three_tries_on_the_schedule_with_one_id_and_fresh_signatures(hooks, db):
    with Receiver([500, 500, 200]) as receiver, time_machine.travel(T0, tick=False) as clock:
        delivery = deliver(RequestFactory(webhook_url=receiver.url()))
        assert delivery.next_attempt_at == T0  # the schedule's first delay is 0

        first = attempt_now(delivery)
        assert first.status_code == 500 and first.error == "HTTP 500"
        assert delivery.state == "pending" and delivery.next_attempt_at == T0 + timedelta(seconds=5)
        verify(receiver.requests[0])

        clock.move_to(T0 + timedelta(seconds=4))
        assert attempt_now(delivery) is None, "not due yet"

        clock.move_to(T0 + timedelta(seconds=5))
        assert attempt_now(delivery).status_code == 500
        assert delivery.next_attempt_at == T0 + timedelta(seconds=5 + 300)
        verify(receiver.requests[1])

        clock.move_to(T0 + timedelta(seconds=5 + 299))
        assert attempt_now(delivery) is None
        clock.move_to(T0 + timedelta(seconds=5 + 300))
        assert attempt_now(delivery).status_code == 200
        verify(receiver.requests[2])

    assert delivery.state == "succeeded" and delivery.attempts == 3 and delivery.next_attempt_at is None
    got = receiver.requests
    assert len(got) == 3
    assert {r.headers["webhook-id"] for r in got} == {delivery.webhook_id}
    assert [int(r.headers["webhook-timestamp"]) for r in got] == [
        int(T0.timestamp()),
        int(T0.timestamp()) + 5,
        int(T0.timestamp()) + 305,
    ]
    assert len({r.headers["webhook-signature"] for r in got}) == 3
    assert {r.body for r in got} == {delivery.body.encode()}
    assert list(delivery.attempt_rows.values_list("number", "status_code")) == [(1, 500), (2, 500), (3, 200)]


def test_every_try_failing_uses_the_whole_schedule_then_fails(hooks, db):
    hooks.WEBHOOK_RETRY_SCHEDULE = [0, 5, 300]
    with Receiver(default=500) as receiver, time_machine.travel(T0, tick=False) as clock:
        delivery = deliver(RequestFactory(webhook_url=receiver.url()))
        assert delivery.max_attempts == 3
        for offset in (0, 5, 305):
            clock.move_to(T0 + timedelta(seconds=offset))
            assert attempt_now(delivery).status_code == 500
        clock.move_to(T0 + timedelta(days=30))
        assert attempt_now(delivery) is None
    assert delivery.state == "failed" and delivery.next_attempt_at is None
    assert delivery.last_status_code == 500 and delivery.last_error == "HTTP 500"
    assert len(receiver.requests) == 3


def test_410_stops_and_disables_the_delivery(hooks, db):
    with Receiver([410]) as receiver:
        delivery = deliver(RequestFactory(webhook_url=receiver.url()))
        assert attempt_now(delivery).status_code == 410
        with time_machine.travel(timezone.now() + timedelta(days=1)):
            assert attempt_now(delivery) is None
    assert delivery.state == "disabled" and delivery.next_attempt_at is None
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_honour_retry_after_in_seconds_and_as_a_date(hooks, db, status):
    later = email.utils.format_datetime(T0 + timedelta(seconds=120 + 3600), usegmt=True)
    script = [
        Reply(status, {"Retry-After": "120"}),
        Reply(status, {"Retry-After": later}),
        Reply(status, {"Retry-After": "1"}),
    ]
    with Receiver(script) as receiver, time_machine.travel(T0, tick=False) as clock:
        delivery = deliver(RequestFactory(webhook_url=receiver.url()))
        attempt_now(delivery)
        # The schedule says 5 s; the receiver asked for 120.
        assert delivery.next_attempt_at == T0 + timedelta(seconds=120)
        clock.move_to(delivery.next_attempt_at)
        attempt_now(delivery)
        assert delivery.next_attempt_at == T0 + timedelta(seconds=120 + 3600)
        clock.move_to(delivery.next_attempt_at)
        attempt_now(delivery)
        # Asking for less than the schedule does not hurry the next try.
        assert delivery.next_attempt_at == T0 + timedelta(seconds=120 + 3600 + 1800)
    assert len(receiver.requests) == 3


def test_retry_after_on_other_statuses_is_ignored_and_absurd_values_are_capped(hooks, db):
    assert services.retry_delay(attempts=1, retry_after=None) == 5
    assert services.retry_delay(attempts=1, retry_after="soon") == 5
    assert services.retry_delay(attempts=1, retry_after="999999999") == services.RETRY_AFTER_MAX
    with Receiver([Reply(500, {"Retry-After": "600"})]) as receiver, time_machine.travel(T0, tick=False):
        delivery = deliver(RequestFactory(webhook_url=receiver.url()))
        attempt_now(delivery)
        assert delivery.next_attempt_at == T0 + timedelta(seconds=5)


def test_a_receiver_that_hangs_times_out_and_is_retried(hooks, db):
    hooks.WEBHOOK_TIMEOUT = 1.0
    with Receiver([HANG]) as receiver:
        delivery = deliver(RequestFactory(webhook_url=receiver.url()))
        attempt = attempt_now(delivery)
    assert attempt.status_code is None and "timed out" in attempt.error
    assert 900 <= attempt.duration_ms < 3000
    assert delivery.state == "pending" and delivery.attempts == 1
    assert delivery.next_attempt_at > timezone.now() + timedelta(seconds=3)
    assert len(receiver.requests) == 1


def test_a_redirect_to_a_private_address_is_not_followed(hooks, db):
    with Receiver() as canary:
        redirect = Reply(302, {"Location": canary.url("/latest/meta-data")})
        with Receiver([redirect]) as receiver:
            delivery = deliver(RequestFactory(webhook_url=receiver.url()))
            attempt = attempt_now(delivery)
    assert attempt.status_code == 302 and "not followed" in attempt.error
    assert canary.url("/latest/meta-data") in attempt.error
    assert canary.connections == 0 and canary.requests == []
    assert delivery.state == "pending" and delivery.attempts == 1, "a 3xx is a failed try, retried"


def test_only_64_kib_of_a_response_is_read_and_an_excerpt_kept(hooks, db):
    with Receiver([Reply(200, body=b"x" * (1024 * 1024))]) as receiver:
        delivery = deliver(RequestFactory(webhook_url=receiver.url()))
        attempt = attempt_now(delivery)
    assert attempt.status_code == 200 and delivery.state == "succeeded"
    assert attempt.response_excerpt == "x" * services.RESPONSE_EXCERPT_CHARS


def test_the_http_seam_reads_at_most_64_kib():
    from core import outbound

    with Receiver([Reply(200, body=b"y" * (1024 * 1024))]) as receiver:
        result = outbound.post(url=receiver.url(), body=b"{}", headers={}, timeout=5, allow_private=True)
    assert result.status == 200 and len(result.body) == 64 * 1024


# --- signing -------------------------------------------------------------------------------------------


def test_a_tampered_body_or_a_stale_timestamp_is_rejected_by_the_receiver(hooks, db):
    with Receiver() as receiver:
        attempt_now(deliver(RequestFactory(webhook_url=receiver.url())))
    [got] = receiver.requests
    verify(got)
    tampered = got.body.replace(b'"state":"completed"', b'"state":"failed"')
    assert tampered != got.body
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another-secret-of-32-bytes-long!").decode()).verify(
            got.body, got.headers
        )
    with time_machine.travel(datetime.fromtimestamp(got.at, UTC) + timedelta(minutes=6)):
        with pytest.raises(WebhookVerificationError, match="too old"):
            verify(got)


def test_a_key_with_its_own_secret_signs_with_it_and_with_both_while_rotating(hooks, db, api_key):
    key, _ = api_key
    first, first_secret = services.webhook_secret_create(api_key=key)
    with Receiver() as receiver, time_machine.travel(T0, tick=True) as clock:
        attempt_now(deliver(RequestFactory(api_key=key, webhook_url=receiver.url())))
        verify(receiver.requests[0], first_secret)
        with pytest.raises(WebhookVerificationError):
            verify(receiver.requests[0], SECRET)  # the key's secret replaces WEBHOOK_SECRET

        second, second_secret = services.webhook_secret_create(api_key=key)
        first.refresh_from_db()
        grace_end = second.created_at + services.SECRET_ROTATION_GRACE
        assert abs(first.expires_at - grace_end) < timedelta(seconds=1)
        attempt_now(deliver(RequestFactory(api_key=key, webhook_url=receiver.url())))
        during = receiver.requests[1]
        assert len(during.headers["webhook-signature"].split(" ")) == 2
        verify(during, first_secret)
        verify(during, second_secret)

        clock.shift(services.SECRET_ROTATION_GRACE + timedelta(minutes=1))
        attempt_now(deliver(RequestFactory(api_key=key, webhook_url=receiver.url())))
        after = receiver.requests[2]
        verify(after, second_secret)
        with pytest.raises(WebhookVerificationError):
            verify(after, first_secret)


def test_without_any_secret_deliveries_carry_id_and_timestamp_but_no_signature(hooks, db):
    hooks.WEBHOOK_SECRET = ""
    with Receiver() as receiver:
        attempt_now(deliver(RequestFactory(webhook_url=receiver.url())))
    [got] = receiver.requests
    assert got.headers["webhook-id"].startswith("msg_") and got.headers["webhook-timestamp"].isdigit()
    assert "webhook-signature" not in got.headers


def test_secret_parsing_refuses_malformed_and_weak_secrets():
    assert len(signing.secret_key_bytes(SECRET)) == 32
    assert len(signing.secret_key_bytes(signing.secret_generate())) == 32
    for bad in ("plain", "whsec_", "whsec_not*base64", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError):
            signing.secret_key_bytes(bad)


def test_a_bad_webhook_secret_stops_start_up_naming_the_variable(tmp_path):
    import os

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "gateway_project.settings", "WEBHOOK_SECRET": "hunter2"}
    env["GATEWAY_VAR_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "WEBHOOK_SECRET must have the form whsec_<base64>" in result.stderr


# --- the database is the truth: the sweeper ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_with_redis_flushed_mid_schedule_the_sweeper_completes_the_delivery(hooks):
    with Receiver([500], default=200) as receiver, time_machine.travel(T0, tick=True) as clock:
        delivery = deliver(RequestFactory(webhook_url=receiver.url()))
        run_queued_jobs()
        delivery.refresh_from_db()
        assert delivery.attempts == 1 and delivery.state == "pending"
        assert redis_client().keys("rq:*"), "the retry is scheduled in Redis"

        redis_client().flushdb()
        clock.shift(timedelta(seconds=10))
        assert run_queued_jobs() == 0 and len(receiver.requests) == 1, "nothing left in Redis to run"

        out = io.StringIO()
        call_command("reconcile", stdout=out)
        assert "queued, created or closed: 1" in out.getvalue()
        run_queued_jobs()
        receiver.wait_for(2)
    delivery.refresh_from_db()
    assert delivery.state == "succeeded" and delivery.attempts == 2
    assert [r.headers["webhook-id"] for r in receiver.requests] == [delivery.webhook_id] * 2


@pytest.mark.django_db(transaction=True)
def test_the_sweeper_does_not_queue_a_try_that_is_already_queued(hooks):
    deliver(RequestFactory(webhook_url=NOWHERE))
    queue_length = redis_client().llen("rq:queue:high")
    assert queue_length == 1
    assert services.webhook_deliveries_sweep() == 0
    assert redis_client().llen("rq:queue:high") == 1


@pytest.mark.django_db(transaction=True)
def test_the_sweeper_creates_a_delivery_that_a_crash_kept_from_existing(hooks):
    with Receiver() as receiver:
        request = RequestFactory(webhook_url=receiver.url())  # finished, but no hook ever ran
        old = RequestFactory(webhook_url=receiver.url())
        QueryRequest.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(days=3))
        assert services.webhook_deliveries_sweep() == 1
        run_queued_jobs()
        receiver.wait_for(1)
    assert WebhookDelivery.objects.get(request=request).state == "succeeded"
    assert not WebhookDelivery.objects.filter(request=old).exists(), "history is not re-sent"


def test_a_try_cut_short_by_a_dying_worker_is_closed_and_made_again(hooks, db):
    with Receiver() as receiver, time_machine.travel(T0, tick=False) as clock:
        delivery = deliver(RequestFactory(webhook_url=receiver.url()))
        # What a worker that died mid-send leaves: a claimed try, its row open, the lease running.
        assert services._claim(delivery.id) is not None
        WebhookAttempt.objects.create(
            delivery=delivery, number=1, url=delivery.url, webhook_timestamp=0, started_at=T0
        )
        assert attempt_now(delivery) is None, "the lease holds it"
        clock.move_to(delivery.next_attempt_at)
        attempt = attempt_now(delivery)
    assert attempt.number == 2 and attempt.status_code == 200 and delivery.state == "succeeded"
    assert WebhookAttempt.objects.get(delivery=delivery, number=1).error.startswith("abandoned")


def test_a_due_delivery_whose_last_try_was_cut_short_is_failed_by_the_sweeper(hooks, db):
    delivery = deliver(RequestFactory(webhook_url=NOWHERE))
    WebhookDelivery.objects.filter(id=delivery.id).update(
        attempts=F("max_attempts"), next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    assert services.webhook_deliveries_sweep() == 1
    delivery.refresh_from_db()
    assert delivery.state == "failed" and "cut short" in delivery.last_error


def test_the_worker_sweep_runs_once_per_interval_across_workers(hooks, db):
    assert services.webhook_sweep_if_due() == 0
    assert services.webhook_sweep_if_due() is None, "another worker swept within the interval"
    assert 0 < redis_client().ttl(services.SWEEP_LOCK_KEY) <= hooks.WEBHOOK_SWEEP_INTERVAL


# --- operators -------------------------------------------------------------------------------------


def test_redeliver_sends_a_finished_delivery_again_with_the_same_id_and_body(hooks, db):
    with Receiver() as receiver:
        delivery = deliver(RequestFactory(webhook_url=receiver.url()))
        attempt_now(delivery)
        assert delivery.state == "succeeded"
        services.webhook_delivery_redeliver(delivery=delivery)
        delivery.refresh_from_db()
        assert delivery.state == "pending" and delivery.next_attempt_at <= timezone.now()
        attempt_now(delivery)
    assert delivery.state == "succeeded" and delivery.attempts == 2
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] and first.body == second.body


def test_admin_lists_deliveries_with_attempts_and_redelivers(hooks, admin_client):
    with Receiver([500], default=200) as receiver:
        delivery = deliver(RequestFactory(webhook_url=receiver.url()))
        attempt_now(delivery)

        listing = admin_client.get("/admin/webhooks/webhookdelivery/?state__exact=pending")
        assert listing.status_code == 200 and str(delivery.id) in listing.content.decode()
        assert (
            admin_client.get("/admin/webhooks/webhookdelivery/?state__exact=failed")
            .content.decode()
            .count(str(delivery.id))
            == 0
        )
        assert (
            str(delivery.id)
            in admin_client.get("/admin/webhooks/webhookdelivery/?trouble=retrying").content.decode()
        )
        page = admin_client.get(f"/admin/webhooks/webhookdelivery/{delivery.id}/change/").content.decode()
        assert "HTTP 500" in page and delivery.webhook_id in page

        response = admin_client.post(
            "/admin/webhooks/webhookdelivery/",
            {"action": "redeliver_now", "_selected_action": [str(delivery.id)]},
            follow=True,
        )
        assert "Queued 1 delivery to be sent again now." in response.content.decode()
        attempt_now(delivery)
    assert delivery.state == "succeeded" and len(receiver.requests) == 2


def test_admin_creates_a_key_secret_and_shows_it_only_once(admin_client, api_key):
    key, _ = api_key
    response = admin_client.post("/admin/webhooks/webhooksecret/add/", {"api_key": key.pk}, follow=True)
    page = response.content.decode()
    row = WebhookSecret.objects.get(api_key=key)
    assert row.secret.startswith("whsec_") and row.secret in page
    again = admin_client.get(f"/admin/webhooks/webhooksecret/{row.pk}/change/").content.decode()
    assert row.secret not in again and row.prefix in again

    response = admin_client.post(
        "/admin/webhooks/webhooksecret/", {"action": "rotate", "_selected_action": [row.pk]}, follow=True
    )
    new = WebhookSecret.objects.filter(api_key=key).exclude(pk=row.pk).get()
    assert new.secret in response.content.decode()
    row.refresh_from_db()
    assert row.expires_at is not None and row.is_active, "the old secret signs through the grace period"


def test_webhook_secret_command_prints_the_secret_last_and_rotates(db, api_key):
    key, _ = api_key
    out = io.StringIO()
    call_command("webhook_secret", key.prefix, stdout=out, stderr=io.StringIO())
    first = out.getvalue().strip().splitlines()[-1]
    assert WebhookSecret.objects.get(api_key=key).secret == first

    out = io.StringIO()
    call_command("webhook_secret", key.name, "--grace", "0", stdout=out, stderr=io.StringIO())
    second = out.getvalue().strip().splitlines()[-1]
    assert second != first
    assert [s.secret for s in WebhookSecret.objects.filter(api_key=key) if s.is_active] == [second]
    assert services.webhook_signing_keys(api_key=key) == [signing.secret_key_bytes(second)]


def test_outcomes_are_counted_in_the_metrics(hooks, db):
    from core import metrics

    with Receiver([500, 410]) as receiver, time_machine.travel(T0, tick=False) as clock:
        delivery = deliver(RequestFactory(webhook_url=receiver.url()))
        attempt_now(delivery)
        clock.move_to(delivery.next_attempt_at)
        attempt_now(delivery)
    text = metrics.metrics_text().decode()
    assert 'claude_webhook_deliveries_total{outcome="retrying"} 1.0' in text
    assert 'claude_webhook_deliveries_total{outcome="disabled"} 1.0' in text
