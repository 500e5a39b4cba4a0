"""Stops that end in time: SIGTERM of a worker and Ctrl-C of scripts/serve, idle and mid-job.

A supervisor (honcho in scripts/serve, Docker, systemd) sends SIGTERM and kills what is left after
its grace (honcho: 5 s). Nothing may need that kill, a job stopped half-way runs again, no process is
left behind, and a worker that died without deregistering is not counted as alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import requests
from rq import Worker

from claude_cli.process import process_alive
from core.redis import redis_client
from queries.models import Job
from queries.services import workers_alive
from queries.services.stats import worker_figures
from tests.support import REPO
from tests.support.processes import (
    database_url,
    free_port,
    group_members,
    live_processes,
    process_environment,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# What a supervisor allows before it kills (honcho's KILL_WAIT), with room for a loaded machine.
STOP_BOUND = 10.0


def stop_and_time(proc: subprocess.Popen, sig: signal.Signals = signal.SIGTERM) -> float:
    """Signal the process's whole group, as a supervisor or a terminal does; seconds until it ended."""
    started = time.monotonic()
    os.killpg(proc.pid, sig)
    proc.wait(timeout=30)
    return time.monotonic() - started


def registered_alive() -> int:
    return len(workers_alive(redis=redis_client()))


def running_job(http: requests.Session, text: str) -> Job:
    response = http.post(f"{http.base}/api/query", json={"query": text}, timeout=30)
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]
    wait_for(
        lambda: Job.objects.filter(id=job_id, state=Job.State.RUNNING, cli_pid__isnull=False).exists(),
        timeout=60,
        message="the job's CLI to start",
    )
    return Job.objects.get(id=job_id)


def test_sigterm_stops_a_busy_rqworker_in_time_and_its_job_runs_again(http, worker_process):
    worker = worker_process(env={"WORKER_STOP_GRACE": "1", "CLAUDE_POOL_SIZE": "0"})
    wait_for(lambda: registered_alive() == 1, timeout=60, message="the worker to register")
    job = running_job(http, "a long answer [[mock:sleep=6]]")

    took = stop_and_time(worker)
    assert took < STOP_BOUND and worker.returncode == 0, (took, worker.returncode)
    assert group_members(worker.pid) == [] and not process_alive(job.cli_pid)
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED and job.worker_name == ""
    assert registered_alive() == 0 and Worker.count(connection=redis_client()) == 0

    worker_process(env={"CLAUDE_POOL_SIZE": "0"})
    wait_for(
        lambda: Job.objects.filter(id=job.id, state=Job.State.COMPLETED).exists(),
        timeout=90,
        message="the job to run again and complete",
    )
    print(f"\nbusy rqworker stopped by SIGTERM in {took:.1f} s (WORKER_STOP_GRACE=1)")


def test_sigterm_stops_a_forking_rqworker_in_time_and_the_job_in_its_work_horse_runs_again(
    http, worker_process
):
    fork = {"WORKER_FORK": "true", "CLAUDE_POOL_SIZE": "0"}
    worker = worker_process(env={**fork, "WORKER_STOP_GRACE": "1"})
    wait_for(lambda: registered_alive() == 1, timeout=60, message="the worker to register")
    job = running_job(http, "a long answer [[mock:sleep=6]]")
    horse = int(job.worker_name.rpartition(":")[2])
    assert horse != worker.pid and process_alive(horse)  # the job runs in a work horse

    took = stop_and_time(worker)
    assert took < STOP_BOUND and worker.returncode == 0, (took, worker.returncode)
    # The grace ran out: the worker stopped its horse (SIGTERM), the horse's CLI went with it.
    assert not process_alive(horse) and not process_alive(job.cli_pid)
    assert group_members(worker.pid) == [] and group_members(horse) == []
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED and job.worker_name == ""
    assert registered_alive() == 0 and Worker.count(connection=redis_client()) == 0

    worker_process(env=fork)
    wait_for(
        lambda: Job.objects.filter(id=job.id, state=Job.State.COMPLETED).exists(),
        timeout=90,
        message="the job to run again and complete",
    )
    print(f"\nbusy forking rqworker stopped by SIGTERM in {took:.1f} s (WORKER_STOP_GRACE=1)")


def test_sigterm_lets_a_forking_rqworker_finish_a_job_that_ends_within_the_grace(http, worker_process):
    worker = worker_process(env={"WORKER_FORK": "true", "CLAUDE_POOL_SIZE": "0", "WORKER_STOP_GRACE": "8"})
    wait_for(lambda: registered_alive() == 1, timeout=60, message="the worker to register")
    job = running_job(http, "a short answer [[mock:sleep=1]]")
    horse = int(job.worker_name.rpartition(":")[2])

    took = stop_and_time(worker)
    assert took < STOP_BOUND and worker.returncode == 0, (took, worker.returncode)
    job.refresh_from_db()
    assert job.state == Job.State.COMPLETED, (job.state, job.error_type, job.error_message)
    assert not process_alive(horse) and not process_alive(job.cli_pid)
    assert group_members(worker.pid) == [] and group_members(horse) == []
    assert registered_alive() == 0 and Worker.count(connection=redis_client()) == 0
    print(f"\nforking rqworker finished its job and stopped by SIGTERM in {took:.1f} s")


def test_sigterm_stops_an_idle_rqworker_pool_and_its_warm_clis_in_time(worker_process):
    pool = worker_process(pool=2)
    wait_for(lambda: registered_alive() == 2, timeout=60, message="the pool's workers to register")
    time.sleep(2)  # the warm CLIs start

    took = stop_and_time(pool)
    assert took < STOP_BOUND and pool.returncode == 0, (took, pool.returncode)
    assert group_members(pool.pid) == []
    assert registered_alive() == 0 and Worker.count(connection=redis_client()) == 0
    print(f"\nidle rqworker-pool stopped by SIGTERM in {took:.1f} s")


def test_a_worker_killed_without_deregistering_is_not_counted_alive(worker_process):
    worker = worker_process(env={"CLAUDE_POOL_SIZE": "0"})
    wait_for(lambda: registered_alive() == 1, timeout=60, message="the worker to register")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    figures = worker_figures(redis=redis_client())
    assert (figures["alive"], figures["stale"]) == (0, 1)


def _serve_leftovers(port: int) -> list[str]:
    """Live processes started by that scripts/serve (its PORT is in their environment)."""
    found = []
    for entry, _ in live_processes():
        try:
            if f"PORT={port}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:100]!r}")
        except OSError:
            continue
    return found


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "mid-job"])
def test_ctrl_c_stops_scripts_serve_in_time_without_sigkill(busy, api_key, mock, tmp_path, redis_db):
    port = free_port()
    env = process_environment(
        mock,
        tmp_path / "home",
        tmp_path / "workdir",
        HOST="127.0.0.1",
        PORT=str(port),
        QUEUE_CONCURRENCY="2",
        WEB_CONCURRENCY="2",
        DATABASE_URL=database_url(),
        GATEWAY_VAR_DIR=str(tmp_path / "var"),
    )
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            ["scripts/serve"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {api_key[1]}"
        http.base = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]

        def ready() -> bool:
            assert serve.poll() is None, log.read_text()[-3000:]
            try:
                return requests.get(f"{http.base}/ready", timeout=5).status_code == 200  # type: ignore[attr-defined]
            except requests.RequestException:
                return False

        wait_for(ready, timeout=120, interval=0.3, message="scripts/serve to be ready")
        job = running_job(http, "an answer cut short [[mock:sleep=30]]") if busy else None

        took = stop_and_time(serve, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground group
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
    output = log.read_text()
    assert "SIGKILL" not in output, output[-3000:]
    assert took < STOP_BOUND, took
    wait_for(lambda: _serve_leftovers(port) == [], timeout=5, message="every process of scripts/serve to end")
    assert registered_alive() == 0 and Worker.count(connection=redis_client()) == 0
    if job is not None:
        cli_pid = job.cli_pid
        job.refresh_from_db()
        assert job.state == Job.State.QUEUED and not process_alive(cli_pid)
    print(f"\nscripts/serve ({'mid-job' if busy else 'idle'}) stopped by Ctrl-C in {took:.1f} s")
