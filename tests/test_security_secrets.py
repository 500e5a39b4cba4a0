"""No secret (API key, webhook secret, MCP server env) in logs, rq job arguments or error messages.

A full run through gunicorn, a real rq worker and the real CLI, with successes, CLI failures, a
timeout, refusals and webhook deliveries, all logging at DEBUG; then every byte of output is searched.
"""

from __future__ import annotations

import base64
import secrets
import sys
import zlib
from pathlib import Path

import pytest
import requests

from core.redis import redis_client
from queries import services
from queries.models import Job, QueryRequest
from routing.models import IntentRule, McpServer
from tests.support.processes import start_web_server
from tests.support.receivers import Receiver
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def rq_job_payloads() -> list[bytes]:
    """Every stored field of every rq job, with the pickled call data decompressed."""
    redis = redis_client()
    payloads = []
    for key in redis.scan_iter("rq:job:*"):
        if redis.type(key) != b"hash":
            continue
        for field, value in redis.hgetall(key).items():
            payloads.append(field + b"=" + value)
            if field == b"data":
                try:
                    payloads.append(zlib.decompress(value))
                except zlib.error:
                    pass
    return payloads


def test_secrets_appear_in_no_log_job_argument_or_error(
    transactional_db, mock, tmp_path, processes, worker_process, caplog, capfd
):
    caplog.set_level("DEBUG")
    _, api_key = services.api_key_create(name="secret holder")
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    mcp_secret = "mcp-token-" + secrets.token_hex(16)
    vault = McpServer.objects.create(
        name="vault",
        command=str(Path(sys.executable).with_name("mcp-server-fetch")),
        env={"VAULT_TOKEN": mcp_secret},
    )
    IntentRule.objects.create(name="vault", pattern=r"\bvault\b", order=1).servers.add(vault)
    env = {
        "WEBHOOK_SECRET": webhook_secret,
        "WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
        "LOG_LEVEL": "DEBUG",
        "GUNICORN_ACCESS_LOG": "-",
        "CLAUDE_TIMEOUT": "8",
        "CLAUDE_KILL_GRACE": "1",
    }

    with Receiver() as receiver:
        url = start_web_server(processes, mock, tmp_path, **env)
        worker_process(env=env)
        auth = {"Authorization": f"Bearer {api_key}"}
        queries = [
            "What is 2+2?",
            "Ask the vault: what is 2+2?",
            "[[mock:error=400]] vault, please",
            "[[mock:sleep=30]] vault again",  # the upstream never answers: the timeout stops the CLI
        ]
        replies = [
            requests.post(
                f"{url}/api/query", json={"query": q, "webhookUrl": receiver.url()}, headers=auth, timeout=30
            )
            for q in queries
        ]
        assert [r.status_code for r in replies] == [202] * 4, [r.text for r in replies]
        job_ids = [r.json()["jobId"] for r in replies]
        # Refusals that see the key: one character off, the wrong scheme, a key that is far too long.
        replies += [
            requests.post(
                f"{url}/api/query", json={"query": "x"}, headers={"Authorization": f"Bearer {api_key}x"}
            ),
            requests.post(
                f"{url}/api/query", json={"query": "x"}, headers={"Authorization": f"Token {api_key}"}
            ),
            requests.post(f"{url}/api/query", json={"query": "x"}, headers={"X-API-Key": api_key * 10}),
            requests.post(
                f"{url}/api/query", data="{broken", headers={**auth, "Content-Type": "application/json"}
            ),
        ]
        assert [r.status_code for r in replies[4:]] == [401, 401, 401, 400]

        def all_finished() -> bool:
            return Job.objects.filter(id__in=job_ids, state__in=Job.FINISHED_STATES).count() == 4

        wait_for(all_finished, timeout=90, message="the four jobs to finish")
        received = receiver.wait_for(4, timeout=60)
        replies += [requests.get(f"{url}/api/query/{job_id}", headers=auth, timeout=10) for job_id in job_ids]

    jobs = {str(job.id): job for job in Job.objects.filter(id__in=job_ids)}
    assert jobs[job_ids[1]].mcp_servers == ["vault"] and jobs[job_ids[1]].state == Job.State.COMPLETED
    assert jobs[job_ids[2]].error_type == "cli_error" and jobs[job_ids[3]].error_type == "cli_timeout"
    assert {r.headers.get("webhook-signature", "")[:3] for r in received} == {"v1,"}

    logs = b"".join(path.read_bytes() for path in tmp_path.glob("*.log"))
    captured = capfd.readouterr()
    texts = {
        "server and worker logs": logs.decode("utf-8", "replace"),
        "test process logs": caplog.text + captured.out + captured.err,
        "rq jobs": b"\n".join(rq_job_payloads()).decode("utf-8", "replace"),
        "API replies": "\n".join(f"{r.status_code} {dict(r.headers)} {r.text}" for r in replies),
        "job errors": "\n".join(f"{j.error_message}\n{j.stderr_tail}" for j in jobs.values()),
        "webhook requests": "\n".join(f"{r.headers} {r.body.decode('utf-8', 'replace')}" for r in received),
        "request rows": "\n".join(str(row) for row in QueryRequest.objects.values_list()),
    }
    # The capture saw the run: requests, job outcomes and failures are all there.
    assert "cli_error" in texts["server and worker logs"] or "API Error" in texts["server and worker logs"]
    assert "/api/query" in texts["server and worker logs"] and len(texts["rq jobs"]) > 100
    for name, text in texts.items():
        for label, secret in (
            ("API key", api_key),
            ("API key body", api_key.removeprefix("cgw_")),
            ("webhook secret", webhook_secret),
            ("webhook secret body", webhook_secret.removeprefix("whsec_")),
            ("MCP server env", mcp_secret),
        ):
            assert secret not in text, f"the {label} appears in the {name}"
