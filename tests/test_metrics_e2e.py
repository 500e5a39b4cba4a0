"""/metrics end to end: gunicorn with two workers, a separate rq worker pool and the real CLI.

Counts are made in rq work horses and in either gunicorn worker; every scrape, whichever gunicorn
worker answers it, must show exactly what happened.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.db.models import Sum

from queries.models import Job, QueryRequest
from tests.support.metrics import parse_samples, promtool_check, value
from tests.support.waiting import wait_finished, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def fresh_scrape(url: str) -> str:
    # A new connection each time, so successive scrapes can land on different gunicorn workers.
    response = requests.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10)
    assert response.status_code == 200
    return response.text


def metrics_scrapers(web_log: Path) -> set[int]:
    pids = set()
    for line in web_log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry["logger"] == "gateway.access" and entry["message"].startswith("GET /metrics "):
                pids.add(entry["pid"])
    return pids


def test_counts_are_exact_on_every_scrape_whichever_process_answers(
    web_server, worker_process, http, processes, tmp_path
):
    worker_process(pool=2)

    def submit(body: dict) -> requests.Response:
        return http.post(f"{web_server}/api/query", json=body, timeout=30)

    posts = 0
    completed = submit({"query": "What is 2+2?"}).json()["jobId"]
    failed = submit({"query": "[[mock:error=400]] refuse this"}).json()["jobId"]
    posts += 2
    assert wait_finished(http, completed, timeout=90)["state"] == "completed"
    assert wait_finished(http, failed, timeout=90)["error"]["type"] == "cli_error"
    cached = submit({"query": "  WHAT is 2+2?"})
    posts += 1
    assert cached.status_code == 200 and cached.json()["cached"] is True

    barrier = threading.Barrier(5)

    def identical(_: int) -> requests.Response:
        barrier.wait(timeout=30)
        return submit({"query": "[[mock:sleep=3]] one run for all of us"})

    with ThreadPoolExecutor(max_workers=5) as pool:
        joined = list(pool.map(identical, range(5)))
    posts += 5
    assert len({r.json()["jobId"] for r in joined}) == 1
    assert sum(1 for r in joined if r.json().get("deduplicated")) == 4
    # While that one CLI runs, the gauge shows it.
    wait_for(
        lambda: value(parse_samples(fresh_scrape(web_server)), "claude_cli_processes_running") == 1,
        timeout=30,
        message="the running CLI to show on /metrics",
    )
    assert wait_finished(http, joined[0].json()["jobId"], timeout=90)["state"] == "completed"

    sums = Job.objects.aggregate(cost=Sum("cost_usd"), input=Sum("input_tokens"), output=Sum("output_tokens"))
    expected = {
        ("claude_jobs_completed_total", ()): 2,
        ("claude_jobs_failed_total", (("reason", "cli_error"),)): 1,
        ("claude_jobs_failed_total", (("reason", "worker_lost"),)): 0,
        ("claude_cache_hits_total", ()): 1,
        ("claude_cache_misses_total", ()): 7,
        ("claude_dedup_hits_total", ()): 4,
        ("claude_execution_duration_seconds_count", ()): 3,
        ("claude_cli_processes_running", ()): 0,
        ("claude_tokens_total", (("type", "input"),)): sums["input"],
        ("claude_tokens_total", (("type", "output"),)): sums["output"],
        ("claude_queue_size", (("queue", "default"), ("state", "queued"))): 0,
        ("claude_queue_size", (("queue", "default"), ("state", "started"))): 0,
        (
            "django_http_requests_total_by_view_transport_method_total",
            (("method", "POST"), ("transport", "http"), ("view", "query-create")),
        ): posts,
    }
    # The cache hit's row comes from a worker's journal recording, a moment after the reply.
    wait_for(lambda: QueryRequest.objects.count() == posts, timeout=10, message="every request's row")

    def check(text: str) -> None:
        samples = parse_samples(text)
        actual = {key: samples.get(key) for key in expected}
        assert actual == expected
        assert samples[("claude_cost_usd_total", ())] == pytest.approx(float(sums["cost"]), abs=1e-9)
        workers = {labels: v for (name, labels), v in samples.items() if name == "claude_workers"}
        assert sum(workers.values()) == 2, workers  # the pool's two workers, on the web's page

    web_log = next(tmp_path.glob("web-*.log"))
    scrapes = 0
    while scrapes < 10 or (len(metrics_scrapers(web_log)) < 2 and scrapes < 60):
        check(fresh_scrape(web_server))
        scrapes += 1
    assert len(metrics_scrapers(web_log)) == 2, "both gunicorn workers should have answered a scrape"
    promtool_check(fresh_scrape(web_server))

    # A gunicorn worker dies: its counts stay in the totals, its files are folded into the archive.
    gunicorn = next(p for p in processes.started if "gunicorn" in p.args[0])
    victims = children(gunicorn.pid)
    assert len(victims) == 2
    victim = min(victims)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(children(gunicorn.pid) - {victim}) == 2, timeout=30, message="a new gunicorn worker")
    metrics_dir = next(tmp_path.glob("prometheus-*"))
    wait_for(
        lambda: not list(metrics_dir.glob(f"*_{victim}.db")), timeout=10, message="the dead worker's files"
    )
    assert (metrics_dir / "counter_archive.db").exists()
    for _ in range(6):
        check(fresh_scrape(web_server))
