"""PostgreSQL drops every connection mid-burst (``pg_terminate_backend``, as a restart or failover
does), and PostgreSQL unreachable altogether.

The gateway's processes run with the real CLI answering through the mock API. After the drop no
caller may get a 5xx and every accepted job must end; while the database is unreachable the API
answers JSON 503s.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from asgiref.sync import async_to_sync
from django.db import OperationalError, connection, connections
from django.test import RequestFactory

from core.db import connections_drop_broken
from core.handlers import GatewayWSGIHandler
from queries import services
from queries.models import Job, QueryRequest
from queries.streaming import query_detail
from tests.support.processes import free_port, start_web_server
from tests.support.v1 import MODEL
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]


def terminate_backends() -> int:
    """Every other connection to the test database, dropped by the server."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


@pytest.mark.e2e
def test_no_caller_gets_a_5xx_and_every_job_ends_after_the_database_drops_every_connection(
    http, worker_process, mock
):
    worker_process(pool=2, env={"CLAUDE_POOL_SIZE": "0"})
    wait_for(
        lambda: requests.get(f"{http.base}/ready", timeout=10).status_code == 200,
        timeout=60,
        message="the gateway to be ready",
    )
    statuses: list[int] = []
    failures: list[str] = []
    accepted: list[str] = []
    lock = threading.Lock()

    def submit(n: int) -> None:
        response = http.post(
            f"{http.base}/api/query", json={"query": f"burst {n} [[mock:sleep=0.3]]"}, timeout=30
        )
        assert response.headers["Content-Type"].startswith("application/json"), response.text[:300]
        body = response.json()
        with lock:
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"POST {response.status_code} {response.text[:300]}")
            if response.status_code == 202:
                accepted.append(body["jobId"])
        # Read back at once: the GET path meets the dropped connections too.
        if response.status_code == 202:
            got = http.get(f"{http.base}/api/query/{body['jobId']}", timeout=30)
            with lock:
                statuses.append(got.status_code)
                if got.status_code >= 500:
                    failures.append(f"GET {got.status_code} {got.text[:300]}")

    dropped = 0
    with ThreadPoolExecutor(6) as executor:
        futures = []
        for n in range(24):
            futures.append(executor.submit(submit, n))
            time.sleep(0.1)
            if n in (6, 14):
                dropped += terminate_backends()
        for future in futures:
            future.result()
    dropped += terminate_backends()

    five_xx = [status for status in statuses if status >= 500]
    print(f"\npostgres drop: {dropped} connections terminated, {len(statuses)} replies, {len(five_xx)} 5xx")
    assert dropped > 0
    assert five_xx == [] and set(statuses) == {200, 202}, failures
    wait_for(
        lambda: not Job.objects.filter(id__in=accepted, state__in=Job.ACTIVE_STATES).exists(),
        timeout=180,
        interval=0.2,
        message="every accepted job to end",
    )
    states = {(job.state, job.error_type) for job in Job.objects.filter(id__in=accepted)}
    assert states == {(Job.State.COMPLETED, "")}
    # The journal's recorders (the workers) reconnected: a cache hit's request is written soon after.
    hit = http.post(f"{http.base}/api/query", json={"query": "burst 0 [[mock:sleep=0.3]]"}, timeout=30)
    assert hit.status_code == 200 and hit.json()["cached"] is True
    wait_for(
        lambda: QueryRequest.objects.filter(id=hit.json()["requestId"]).exists(),
        timeout=30,
        message="the journaled hit to be written",
    )


@pytest.mark.e2e
def test_the_api_answers_json_503s_while_the_database_is_unreachable(
    processes, mock, tmp_path, api_key, transactional_db
):
    base = start_web_server(
        processes, mock, tmp_path, DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/gateway"
    )
    headers = {"Authorization": f"Bearer {api_key[1]}"}
    replies = [
        requests.post(f"{base}/api/query", json={"query": "What is 2+2?"}, headers=headers, timeout=30),
        requests.get(f"{base}/api/query/00000000-0000-0000-0000-000000000000", headers=headers, timeout=30),
    ]
    for reply in replies:
        assert reply.status_code == 503, (reply.request.url, reply.text[:300])
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.json()["error"]["type"] == "overloaded_error"
        assert reply.headers["Retry-After"] == "1"
    # The /v1/ APIs answer in their own shapes: Anthropic's overloaded 529, OpenAI's server error.
    messages = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "2+2?"}]}
    v1 = [
        requests.post(f"{base}/v1/messages", json=messages, headers=headers, timeout=30),
        requests.get(f"{base}/v1/models", headers=headers, timeout=30),
    ]
    for reply in v1:
        assert reply.status_code == 529, (reply.request.url, reply.text[:300])
        assert reply.json()["type"] == "error", reply.text[:300]
        assert reply.json()["error"]["type"] == "overloaded_error"
        assert reply.headers["Retry-After"] == "1"
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "2+2?"}]}
    reply = requests.post(f"{base}/v1/chat/completions", json=chat, headers=headers, timeout=30)
    assert reply.status_code == 529, reply.text[:300]
    assert reply.json()["error"]["code"] == "overloaded", reply.text[:300]
    assert reply.headers["Retry-After"] == "1"
    ready = requests.get(f"{base}/ready", timeout=30)
    assert ready.status_code == 503 and ready.json()["components"]["database"]["status"] == "down"


def _environ(path: str, key: str) -> dict:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "HTTP_HOST": "localhost",
        "HTTP_AUTHORIZATION": f"Bearer {key}",
        "CONTENT_LENGTH": "0",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def _call(handler: GatewayWSGIHandler, environ: dict) -> tuple[str, dict]:
    status: list[str] = []
    body = b"".join(handler(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], json.loads(body)


def job_get_failing(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[dict]:
    """The seam: the service the job detail calls fails as a dropped connection makes it fail, the
    first ``failures`` times; returns the list of its calls."""
    real = services.job_get_for_caller
    calls: list[dict] = []

    def flaky(**kwargs):
        calls.append(kwargs)
        if len(calls) <= failures:
            raise OperationalError("terminating connection due to administrator command")
        return real(**kwargs)

    monkeypatch.setattr(services, "job_get_for_caller", flaky)
    return calls


@pytest.mark.parametrize("failures, expected, calls_made", [(1, "404", 2), (2, "404", 3), (3, "503", 3)])
def test_an_api_request_that_lost_its_connection_runs_again(
    api_key, monkeypatch, failures, expected, calls_made
):
    calls = job_get_failing(monkeypatch, failures)
    status, body = _call(GatewayWSGIHandler(), _environ(f"/api/query/{uuid.uuid4()}", api_key[1]))
    assert status.startswith(expected) and len(calls) == calls_made
    if expected == "503":
        assert body["error"]["type"] == "overloaded_error"
    else:
        assert body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("failures, expected, calls_made", [(1, 404, 2), (2, 404, 3), (3, 503, 3)])
def test_an_async_api_view_that_lost_its_connection_runs_again(
    api_key, monkeypatch, failures, expected, calls_made
):
    # GET /api/query/{id} is an async view (for ?wait=): its DRF checks run on a web thread, not
    # through the WSGI handler's retry, and retry there.
    calls = job_get_failing(monkeypatch, failures)
    job_id = str(uuid.uuid4())
    request = RequestFactory().get(f"/api/query/{job_id}", HTTP_AUTHORIZATION=f"Bearer {api_key[1]}")
    response = async_to_sync(query_detail)(request, job_id=job_id)
    assert response.status_code == expected and len(calls) == calls_made
    expected_type = "overloaded_error" if expected == 503 else "not_found_error"
    assert json.loads(response.content)["error"]["type"] == expected_type


def test_a_connection_the_server_ended_is_replaced_before_use():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    wait_for(lambda: connections_drop_broken() == 1, timeout=5, message="the dropped connection to be seen")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    assert connections_drop_broken() == 0
