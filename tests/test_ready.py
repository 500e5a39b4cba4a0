"""/ready against a Redis of the test's own that is stopped and started again."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import redis
import requests

from tests.support.processes import Processes, free_port, start_web_server
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def start_redis(processes: Processes, port: int) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed")
    proc = processes.start(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        dict(PATH="/usr/bin:/bin"),
        "redis",
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(answers, timeout=15, message=f"redis-server on port {port}")
    return proc


def ready(url: str) -> requests.Response:
    return requests.get(f"{url}/ready", timeout=30)


def test_ready_turns_503_naming_redis_while_it_is_stopped_and_200_when_it_is_back(
    mock, tmp_path, processes, worker_process
):
    port = free_port()
    server = start_redis(processes, port)
    env = {"REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    url = start_web_server(processes, mock, tmp_path, **env)
    worker_process(env=env)
    wait_for(lambda: ready(url).status_code == 200, timeout=60, message="/ready to turn 200")
    # rq gives up if Redis goes away while a starting worker cleans its registries: stop Redis only
    # once that is over, as an outage would find a worker that has been running for a while.
    wait_for(
        lambda: any("cleaning group registries" in log.read_text() for log in tmp_path.glob("worker-*.log")),
        timeout=60,
        message="the worker to finish starting",
    )
    time.sleep(0.5)

    server.terminate()
    server.wait(timeout=10)
    down = ready(url)
    assert down.status_code == 503
    body = down.json()
    assert body["status"] == "unavailable"
    assert "redis" in body["failing"]
    assert body["components"]["redis"]["status"] == "down"
    assert "Error" in body["components"]["redis"]["error"]
    assert body["components"]["database"]["status"] == "ok"
    assert body["components"]["claude"]["status"] == "ok"
    assert all(c["latencyMs"] >= 0 for c in body["components"].values())
    assert requests.get(f"{url}/health", timeout=10).status_code == 200  # liveness needs no Redis

    start_redis(processes, port)
    # The worker finds its registration gone (the new Redis is empty) and registers again.
    back = wait_for(
        lambda: (r := ready(url)).status_code == 200 and r, timeout=90, message="/ready to turn 200 again"
    )
    assert back.json()["failing"] == []
    assert back.json()["components"]["workers"]["workers"] == 1
