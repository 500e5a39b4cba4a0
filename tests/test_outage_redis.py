"""Redis lost mid-burst: a redis-server of the test's own is killed, and started again empty 2 s later.

The gateway's processes (gunicorn, two ``rqworker`` and an ``rqworker-pool`` with a warm CLI pool)
run against it, with the real CLI answering through the mock API. The workers must ride the outage
out, every accepted job must end (queued ones lost with Redis are queued again, the job of a worker
killed meanwhile ends ``worker_lost``), no reply may be a 500 or an HTML page, every surviving worker
must be registered again and heartbeat (busy ones too, that saw no error), the pool's warm CLIs must
serve jobs again, and no process may be left behind.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from rq import Worker

from claude_cli.process import process_alive
from queries.models import Job
from queries.services.workers import workers_alive
from tests.support.processes import group_members, start_web_server, start_worker
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def own_redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class Replies:
    """Every reply the test got, with the time it came, checked for 500s and HTML."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.all: list[tuple[float, int, dict]] = []

    def post(self, http: requests.Session, text: str) -> requests.Response:
        response = http.post(f"{http.base}/api/query", json={"query": text}, timeout=30)
        assert response.headers["Content-Type"].startswith("application/json"), response.text[:300]
        body = response.json()
        with self.lock:
            self.all.append((time.monotonic(), response.status_code, body))
        return response

    def accepted(self) -> list[str]:
        return [body["jobId"] for _, status, body in self.all if status == 202]

    def statuses(self) -> set[int]:
        return {status for _, status, _ in self.all}


def ready(http: requests.Session) -> dict:
    return requests.get(f"{http.base}/ready", timeout=10).json()


def alive_workers(http: requests.Session) -> int:
    workers = ready(http)["components"]["workers"]
    return workers.get("workers", 0) if workers["status"] == "ok" else 0


def test_workers_ride_out_a_redis_restart_and_every_accepted_job_ends(
    own_redis, api_key, mock, tmp_path, processes, transactional_db
):
    env = {"REDIS_URL": own_redis.url, "WEBHOOK_SWEEP_INTERVAL": "5", "CLAUDE_POOL_SIZE": "0"}
    base = start_web_server(processes, mock, tmp_path, **env)
    single = start_worker(processes, mock, tmp_path, env=env)
    plain = start_worker(processes, mock, tmp_path, env=env)
    pool = start_worker(processes, mock, tmp_path, env={**env, "CLAUDE_POOL_SIZE": "1"}, pool=2)
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {api_key[1]}"
    http.base = base  # type: ignore[attr-defined]
    wait_for(lambda: alive_workers(http) == 4, timeout=60, message="four workers to register")

    replies = Replies()
    # Before the outage: more slow jobs than workers, so that some run and some wait in Redis.
    for n in range(8):
        assert replies.post(http, f"before {n} [[mock:sleep=2]]").status_code == 202
    single_name = f"{os.uname().nodename}:{single.pid}"
    wait_for(
        lambda: Job.objects.filter(state=Job.State.RUNNING, worker_name=single_name).exists(),
        timeout=60,
        message="the single worker to run a job",
    )
    lost_job = Job.objects.get(state=Job.State.RUNNING, worker_name=single_name)

    own_redis.stop()
    down_at = time.monotonic()
    # The single worker dies while Redis is away, its job and CLI with no one to settle them.
    os.kill(single.pid, signal.SIGKILL)
    single.wait(timeout=10)
    with ThreadPoolExecutor(4) as executor:
        while time.monotonic() - down_at < 2.0:
            list(executor.map(lambda n: replies.post(http, f"during {n} {time.time()}"), range(4)))
            time.sleep(0.2)
    own_redis.start()  # empty: the queues, the dedup marks and the registrations are gone
    back_at = time.monotonic()

    after = [replies.post(http, f"after {n}") for n in range(4)]
    assert [r.status_code for r in after] == [202] * 4, [r.text for r in after]
    accepted = replies.accepted()
    rq = own_redis.client()

    def nothing_lost() -> bool:
        # Every job the database has queued is back in rq's queue (or already taken by a worker).
        queued = {
            str(i)
            for i in Job.objects.filter(id__in=accepted, state=Job.State.QUEUED).values_list("id", flat=True)
        }
        return queued <= {i.decode() for i in rq.lrange("rq:queue:default", 0, -1)}

    wait_for(nothing_lost, timeout=60, interval=0.1, message="the lost jobs to be queued again")
    requeued_in = time.monotonic() - back_at

    def all_finished() -> bool:
        return not Job.objects.filter(id__in=accepted, state__in=Job.ACTIVE_STATES).exists()

    wait_for(all_finished, timeout=180, interval=0.2, message="every accepted job to end")
    recovered_in = time.monotonic() - back_at

    jobs = {str(job.id): job for job in Job.objects.filter(id__in=accepted)}
    assert len(jobs) == len(accepted)
    lost = jobs.pop(str(lost_job.id))
    assert (lost.state, lost.error_type) == (Job.State.FAILED, Job.ErrorType.WORKER_LOST)
    assert lost.cli_pid and not process_alive(lost.cli_pid)
    assert {(job.state, job.error_type) for job in jobs.values()} == {(Job.State.COMPLETED, "")}
    # Replies: accepted, or JSON 503 while Redis was away; never a 500 or an HTML page.
    assert replies.statuses() <= {202, 503}
    for at, status, body in replies.all:
        if status == 503:
            assert body["error"]["type"] == "overloaded_error" and at >= down_at

    # The workers survived, registered again, and the dead one is not counted.
    assert pool.poll() is None and plain.poll() is None
    wait_for(lambda: alive_workers(http) == 3, timeout=60, message="the three survivors to register again")
    alive = [worker.pid for worker in workers_alive(redis=rq)]
    assert plain.pid in alive
    assert [parent_pid(pid) for pid in alive if pid != plain.pid] == [pool.pid, pool.pid]
    # ... and they go on heartbeating.
    beats = {worker.name: worker.last_heartbeat for worker in Worker.all(connection=rq)}
    assert len(beats) == 3

    # The pool's warm CLIs serve jobs again (the counters started from zero with the empty Redis).
    # Three jobs at once: the plain worker, whose dequeue blocks longest, is first in Redis's line of
    # waiting clients and takes one; the pool's workers take the others.
    def warm_hit() -> bool:
        stamp = time.time()
        job_ids = [
            replies.post(http, f"warm {stamp} {n} [[mock:text=warm]]").json()["jobId"] for n in range(3)
        ]
        jobs = wait_for(
            lambda: (
                found
                if len(found := list(Job.objects.filter(id__in=job_ids).exclude(state__in=Job.ACTIVE_STATES)))
                == len(job_ids)
                else None
            ),
            timeout=60,
            message="the jobs to end",
        )
        assert {job.state for job in jobs} == {Job.State.COMPLETED}
        return scrape(http, "claude_cli_pool_hits_total") > 0

    wait_for(warm_hit, timeout=120, interval=1, message="a job on a warm CLI after the restart")

    def all_beat_again() -> bool:
        now = {worker.name: worker.last_heartbeat for worker in Worker.all(connection=rq)}
        return now.keys() == beats.keys() and all(now[name] > beats[name] for name in beats)

    wait_for(all_beat_again, timeout=60, interval=0.5, message="every worker to heartbeat again")
    assert alive_workers(http) == 3
    print(
        f"\nredis outage: lost jobs queued again {requeued_in:.1f} s after Redis came back; "
        f"all {len(accepted)} accepted jobs ended after {recovered_in:.1f} s"
    )

    for proc in processes.started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in processes.started:
        proc.wait(timeout=15)
        assert group_members(proc.pid) == []


def parent_pid(pid: int | None) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def scrape(http: requests.Session, name: str) -> float:
    text = requests.get(f"{http.base}/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not on /metrics")
