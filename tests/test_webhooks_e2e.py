"""Webhooks end to end: real rq worker processes, the real CLI, real receivers on loopback."""

from __future__ import annotations

import pytest

from core.redis import redis_client
from queries import services as query_services
from tests.support.receivers import SECRET, Receiver, verify
from tests.support.waiting import wait_for
from webhooks.models import WebhookDelivery

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WORKER_ENV = {"WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_SECRET": SECRET}


def delivery_of(submission: query_services.Submission) -> WebhookDelivery | None:
    return WebhookDelivery.objects.filter(request_id=submission.request_id).first()


def test_a_worker_pool_makes_the_retries_on_rqs_scheduler(worker_process):
    # The pool's workers run rq's scheduler, so retries go out on time without the sweeper (60 s).
    worker_process(pool=1, env={**WORKER_ENV, "WEBHOOK_RETRY_SCHEDULE": "0,1,1"})
    with Receiver([500, 500], default=200) as receiver:
        # Submitted through the service: the API would refuse a loopback URL in this process.
        submission = query_services.query_submit(
            api_key=None, query="What is 2+2?", webhook_url=receiver.url()
        )
        received = receiver.wait_for(3, timeout=90)
    delivery = wait_for(
        lambda: (d := delivery_of(submission)) and d.state == "succeeded" and d,
        timeout=30,
        message="the delivery to succeed",
    )
    assert delivery.attempts == 3 and len(received) == 3
    assert {r.headers["webhook-id"] for r in received} == {delivery.webhook_id}
    for got in received:
        assert verify(got)["data"]["result"]["response"] == "4"
    assert received[1].at - received[0].at >= 0.9 and received[2].at - received[1].at >= 0.9
    assert list(delivery.attempt_rows.values_list("status_code", flat=True)) == [500, 500, 200]


def test_a_worker_without_a_scheduler_sweeps_deliveries_back_after_redis_is_flushed(worker_process):
    worker_process(env={**WORKER_ENV, "WEBHOOK_RETRY_SCHEDULE": "0,2", "WEBHOOK_SWEEP_INTERVAL": "5"})
    with Receiver([500], default=200) as receiver:
        submission = query_services.query_submit(
            api_key=None, query="What is 2+2?", webhook_url=receiver.url()
        )
        receiver.wait_for(1, timeout=60)
        wait_for(
            lambda: (d := delivery_of(submission)) and d.attempts == 1 and d.state == "pending" and d,
            timeout=30,
            message="the first try to be recorded",
        )
        redis_client().flushdb()
        received = receiver.wait_for(2, timeout=60)
    delivery = wait_for(
        lambda: (d := delivery_of(submission)) and d.state == "succeeded" and d,
        timeout=30,
        message="the delivery to succeed",
    )
    assert delivery.attempts == 2 and len(received) == 2
    assert received[0].headers["webhook-id"] == received[1].headers["webhook-id"] == delivery.webhook_id


def test_a_worker_refusing_private_addresses_never_reaches_a_loopback_canary(worker_process):
    worker_process(env={"WEBHOOK_ALLOW_PRIVATE": "false", "WEBHOOK_SECRET": SECRET})
    with Receiver() as canary:
        # Stored without the submit-time check, as if the name had pointed elsewhere then.
        submission = query_services.query_submit(api_key=None, query="What is 2+2?", webhook_url=canary.url())
        delivery = wait_for(
            lambda: (d := delivery_of(submission)) and d.state != "pending" and d,
            timeout=60,
            message="the delivery to settle",
        )
    assert delivery.state == "failed" and "non-public address (127.0.0.1)" in delivery.last_error
    assert canary.connections == 0
