"""End to end: HTTP in, a real rq worker process, the real claude CLI against the mock Anthropic API."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from core.redis import redis_client
from queries import services
from queries.models import Job, QueryRequest
from tests.support.processes import group_members
from tests.support.waiting import wait_finished, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def submit(http, body: dict) -> requests.Response:
    return http.post(f"{http.base}/api/query", json=body, timeout=30)


def test_query_is_answered_by_the_real_cli_then_served_from_cache(http, worker_process, mock):
    worker_process()
    response = submit(http, {"query": "What is 2+2?"})
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]

    body = wait_finished(http, job_id)
    assert body["state"] == "completed", body
    assert body["progress"] == 100 and body["error"] is None
    result = body["result"]
    assert result["response"] == "4" and result["format"] == "text"
    assert result["sessionId"] and result["numTurns"] == 1 and result["costUsd"] > 0
    assert result["usage"]["inputTokens"] > 0 and result["durationMs"] >= 0
    assert result["model"] and result["intent"] == "general" and result["mcpServers"] == []
    assert len(mock.message_requests()) == 1

    again = submit(http, {"query": "  what IS 2+2?  "})
    assert again.status_code == 200
    cached = again.json()
    assert cached["cached"] is True and cached["status"] == "completed" and cached["jobId"] == job_id
    assert cached["result"] == result and cached["requestId"] != response.json()["requestId"]
    assert len(mock.message_requests()) == 1  # no new CLI run
    assert Job.objects.count() == 1
    # The cache hit's row comes from a worker's journal recording, a moment after the reply.
    wait_for(
        lambda: (
            list(QueryRequest.objects.order_by("created_at").values_list("outcome", flat=True))
            == ["queued", "cached"]
        ),
        timeout=10,
        message="the cache hit's request row",
    )
    assert QueryRequest.objects.get(id=cached["requestId"]).job_id == uuid.UUID(job_id)


def test_a_worker_records_cache_hits_while_it_runs_a_job(http, worker_process, mock):
    # One in-process worker, busy with a long job: its recorder thread writes the hits meanwhile.
    worker_process(pool=1, env={"WORKER_HEARTBEAT_INTERVAL": "1"})
    first = submit(http, {"query": "What is 2+2?"}).json()["jobId"]
    assert wait_finished(http, first)["state"] == "completed"
    busy = submit(http, {"query": "[[mock:sleep=60]] take your time"}).json()["jobId"]
    wait_for(lambda: Job.objects.filter(id=busy, state=Job.State.RUNNING).exists(), message="the long job")
    hits = [submit(http, {"query": "What is 2+2?"}).json() for _ in range(3)]
    assert all(hit["cached"] for hit in hits)
    ids = [hit["requestId"] for hit in hits]
    wait_for(
        lambda: QueryRequest.objects.filter(id__in=ids).count() == 3,
        timeout=3,
        interval=0.05,
        message="the hits' rows",
    )
    assert Job.objects.get(id=busy).state == Job.State.RUNNING
    assert redis_client().xlen("journal:requests") == 0
    services.job_cancel(job_id=busy)


def test_fifty_concurrent_identical_queries_make_one_job_and_one_cli_run(http, worker_process, mock):
    worker_process()
    barrier = threading.Barrier(50)

    def one(_: int) -> requests.Response:
        barrier.wait(timeout=30)
        return submit(http, {"query": "[[mock:sleep=3]] Name a prime number."})

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(one, range(50)))
    assert {r.status_code for r in responses} == {202}
    job_ids = {r.json()["jobId"] for r in responses}
    assert len(job_ids) == 1
    assert len({r.json()["requestId"] for r in responses}) == 50
    assert sum(1 for r in responses if r.json().get("deduplicated")) == 49

    body = wait_finished(http, job_ids.pop())
    assert body["state"] == "completed"
    assert Job.objects.count() == 1 and QueryRequest.objects.count() == 50
    assert len(mock.message_requests()) == 1


def test_upstream_api_error_fails_the_job_with_cli_error(http, worker_process, mock):
    worker_process()
    job_id = submit(http, {"query": "[[mock:error=400]] please"}).json()["jobId"]
    body = wait_finished(http, job_id)
    assert body["state"] == "failed" and body["progress"] == 100 and body["result"] is None
    assert body["error"]["type"] == "cli_error"
    assert "400" in body["error"]["message"]
    job = Job.objects.get(id=job_id)
    assert job.cli_output["is_error"] is True and job.exit_code == 1
    assert redis_client().get(f"claude:{job.hash}") is None
    assert redis_client().get(f"dedup:{job.hash}") is None


@pytest.mark.parametrize("status", [401, 403])
def test_an_upstream_401_or_403_fails_fast_as_upstream_auth_and_leaves_no_process(
    http, worker_process, mock, status
):
    # The real CLI retries a 401 without end (CLAUDE_TIMEOUT would end it after 120 s); it reports
    # each retry as an api_retry line, on which the runner stops it.
    worker_process()
    job_id = submit(http, {"query": f"[[mock:error={status}]] hello"}).json()["jobId"]
    body = wait_finished(http, job_id, timeout=60)
    assert body["state"] == "failed" and body["error"]["type"] == "upstream_auth", body
    assert "not authorised" in body["error"]["message"] and str(status) in body["error"]["message"]
    job = Job.objects.get(id=job_id)
    assert (job.finished_at - job.started_at).total_seconds() < 10
    assert job.cli_pid and group_members(job.cli_pid) == []
    assert redis_client().get(f"claude:{job.hash}") is None
    assert redis_client().get(f"dedup:{job.hash}") is None


def test_missing_binary_fails_the_job_with_cli_not_found(http, worker_process, tmp_path):
    worker_process(claude_bin=str(tmp_path / "nowhere" / "claude"))
    job_id = submit(http, {"query": "hello"}).json()["jobId"]
    body = wait_finished(http, job_id)
    assert body["state"] == "failed" and body["error"]["type"] == "cli_not_found"


def test_a_worker_pool_runs_queue_concurrency_clis_at_once(http, worker_process, mock):
    worker_process(pool=3)
    job_ids = [submit(http, {"query": f"[[mock:sleep=2]] question {i}"}).json()["jobId"] for i in range(3)]
    for job_id in job_ids:
        assert wait_finished(http, job_id, timeout=90)["state"] == "completed"
    jobs = list(Job.objects.filter(id__in=job_ids))
    latest_start = max(j.started_at for j in jobs)
    earliest_finish = min(j.finished_at for j in jobs)
    assert latest_start < earliest_finish, "the three CLI runs should overlap"
    assert len({j.worker_name for j in jobs}) == 3


def test_ready_reports_each_component(web_server, worker_process):
    down = requests.get(f"{web_server}/ready", timeout=30)
    assert down.status_code == 503
    assert down.json()["components"]["workers"]["status"] == "down"
    assert down.json()["components"]["database"]["status"] == "ok"

    worker_process()
    up = wait_for(
        lambda: (r := requests.get(f"{web_server}/ready", timeout=30)).status_code == 200 and r,
        timeout=30,
        message="/ready to turn 200",
    )
    components = up.json()["components"]
    assert {name: c["status"] for name, c in components.items()} == {
        "database": "ok",
        "redis": "ok",
        "workers": "ok",
        "claude": "ok",
        "upstream": "ok",
    }
    assert components["upstream"]["state"] == "closed"
    assert "2.1." in components["claude"]["version"]
    assert all(c["latencyMs"] >= 0 for c in components.values())


def test_submit_via_service_is_picked_up_by_a_running_worker(worker_process, mock):
    worker_process()
    submission = services.query_submit(api_key=None, query="[[mock:text=hello from the mock]]")
    job = wait_for(
        lambda: Job.objects.filter(id=submission.job_id, state__in=Job.FINISHED_STATES).first(),
        timeout=60,
        message="the job to finish",
    )
    assert job.state == Job.State.COMPLETED and job.response == "hello from the mock"


@pytest.mark.parametrize("fork", [False, True], ids=["in-process", "forking"])
def test_a_process_killed_mid_job_fails_it_as_worker_lost(http, worker_process, fork):
    import os
    import signal

    # In-process, the job dies with its worker: the pool starts another, which settles the job.
    # Forking, the worker outlives its horse and settles the job itself.
    worker_process(pool=1, env={"WORKER_FORK": "true" if fork else "false"})
    job_id = submit(http, {"query": "[[mock:sleep=60]] take your time"}).json()["jobId"]
    job = wait_for(
        lambda: Job.objects.filter(id=job_id, cli_pid__isnull=False).first(),
        timeout=30,
        message="the CLI to start",
    )
    # The process that runs the job (a warm CLI's parent is the worker, never a horse).
    os.kill(int(job.worker_name.rpartition(":")[2]), signal.SIGKILL)
    body = wait_finished(http, job_id)
    assert body["state"] == "failed" and body["error"]["type"] == "worker_lost"
    wait_for(lambda: group_members(job.cli_pid) == [], timeout=10, message="the orphaned CLI to be killed")
    assert redis_client().get(f"dedup:{job.hash}") is None
