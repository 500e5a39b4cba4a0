"""``manage.py webhook_receiver``: the README's way to receive webhooks locally."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support import REPO
from tests.support.factories import RequestFactory
from tests.support.processes import database_url, free_port
from tests.support.receivers import SECRET
from tests.support.waiting import wait_for
from webhooks import services, signing
from webhooks.models import WebhookDelivery


@pytest.fixture
def receiver(tmp_path):
    """The command as an operator runs it; yields (url, read_output)."""
    port = free_port()
    log = tmp_path / "receiver.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "PYTHONUNBUFFERED": "1",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "webhook_receiver", "--port", str(port), "--secret", SECRET],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_for(lambda: "listening on" in log.read_text(), timeout=60, message="webhook_receiver to listen")
    yield f"http://127.0.0.1:{port}/hook", log.read_text
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0, log.read_text()


@pytest.mark.django_db(transaction=True)
def test_the_receiver_prints_what_the_gateway_delivers_and_checks_the_signature(receiver, settings, redis_db):
    url, output = receiver
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_SECRET = SECRET
    request = RequestFactory(webhook_url=url)
    request.job.response = "4"
    request.job.save()
    services.webhook_on_job_finished(job=request.job)
    attempt = services.webhook_delivery_attempt(delivery_id=WebhookDelivery.objects.get().id)
    assert attempt.status_code == 200, attempt.error
    wait_for(lambda: str(request.job.id) in output(), timeout=10, message="the delivery to be printed")
    [line] = [line for line in output().splitlines() if str(request.job.id) in line]
    assert "query.completed" in line and "completed: answer '4'" in line and line.endswith("signature ok")


def test_the_receiver_says_when_a_signature_is_missing_or_wrong(receiver):
    from core import outbound

    url, output = receiver
    body = json.dumps(
        {"type": "query.failed", "data": {"jobId": "j1", "state": "failed", "error": {"type": "cli_error"}}}
    ).encode()
    now = int(time.time())
    wrong = signing.signature_header(
        keys=[b"another key of sixteen+"], msg_id="msg_1", timestamp=now, body=body
    )
    for headers in ({}, {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": wrong}):
        result = outbound.post(url=url, body=body, headers=headers, timeout=5, allow_private=True)
        assert result.status == 200, result.error
    wait_for(lambda: output().count("job j1") == 2, timeout=10, message="both deliveries printed")
    lines = [line for line in output().splitlines() if "job j1" in line]
    assert lines[0].endswith("signature unsigned") and "error cli_error" in lines[0]
    assert lines[1].endswith("signature INVALID: no signature matches the secret")
