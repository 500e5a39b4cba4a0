"""Cache hits with wrk, beside a bare Django view (bench/bare_app.py) served by the same gunicorn
settings and reading the same Redis key, checking every request was recorded (one QueryRequest row
each)."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import redis
import requests
from procs import say, tree_cpu, wait_until
from stack import Gateway, Setup, count_rows, post, start_web, wait_result
from wrk import wrk, wrk_warm_up

WRK_SAME = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""

RECORDED = "SELECT count(*) FROM queries_queryrequest WHERE outcome = 'cached'"


def measure(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    say(f"cache hits: wrk {setup.args.wrk_duration} s against the gateway, then against a bare Django view")
    query = f"cache {run_id}: what is 2+2?"
    job_id, cache_key = cached_entry(setup, gateway, query)
    body = json.dumps(json.dumps({"query": query}))
    script = WRK_SAME.format(body=body, key=gateway.key)
    ours = gateway_hits(setup, gateway, script)
    bare = bare_hits(setup, script, body, job_id, cache_key)
    return {"cache_gateway": ours, "cache_bare": bare}


def cached_entry(setup: Setup, gateway: Gateway, query: str) -> tuple[str, str]:
    """Answer the query once and check the next submission hits the cache: (job id, cache key)."""
    session = gateway.session()
    job = post(session, gateway.url, query)
    wait_result(session, gateway.url, job["jobId"], interval=0.02)
    again = post(session, gateway.url, query)
    if not again.get("cached"):
        raise RuntimeError(f"the second submission was not a cache hit: {again}")
    with psycopg.connect(setup.database_url, autocommit=True) as conn:
        digest = conn.execute("SELECT hash FROM queries_job WHERE id = %s", (job["jobId"],)).fetchone()[0]
    return job["jobId"], f"claude:{digest}"


def gateway_hits(setup: Setup, gateway: Gateway, script: str) -> dict[str, Any]:
    """wrk against the gateway's cache hit, and how many of its requests were recorded."""
    # Hits are journaled in Redis and written by the workers (their maintenance) a few seconds later.
    journal = redis.Redis.from_url(setup.redis_url)
    wrk_warm_up(setup, gateway.url, script, "cache-gateway")
    wait_until(lambda: journal.xlen("journal:requests") == 0, 60, "the request journal to drain")
    before = count_rows(setup, RECORDED)
    cpu = tree_cpu(gateway.web.pid)
    ours = wrk(setup, gateway.url, script, "cache-gateway")
    ours["web_cpu_ms_per_request"] = cpu_ms_per_request(gateway.web.pid, cpu, ours)
    started = time.monotonic()
    wait_until(lambda: journal.xlen("journal:requests") == 0, 60, "the request journal to drain")
    ours["journal_drain_s"] = time.monotonic() - started
    ours["recorded"] = count_rows(setup, RECORDED) - before
    return ours


def bare_hits(setup: Setup, script: str, body: str, job_id: str, cache_key: str) -> dict[str, Any]:
    """wrk against the bare view reading the same Redis key."""
    bare_proc, bare_url = start_web(
        setup, "bench.bare_app:application", "bare-django", BENCH_CACHE_KEY=cache_key
    )
    try:
        check = requests.post(f"{bare_url}/api/query", data=json.loads(body), timeout=5)
        if check.status_code != 200 or json.loads(check.content)["jobId"] != job_id:
            raise RuntimeError(f"the bare view does not answer the cached entry: {check.status_code}")
        wrk_warm_up(setup, bare_url, script, "cache-bare")
        cpu = tree_cpu(bare_proc.pid)
        bare = wrk(setup, bare_url, script, "cache-bare")
        bare["web_cpu_ms_per_request"] = cpu_ms_per_request(bare_proc.pid, cpu, bare)
        return bare
    finally:
        setup.stop(bare_proc)


def cpu_ms_per_request(pid: int, cpu_before: float | None, figures: dict[str, Any]) -> float | None:
    """The web's CPU (gunicorn and its workers) per request wrk made since ``cpu_before``: what a
    request costs whatever else loads the machine."""
    cpu_after = tree_cpu(pid)
    if cpu_before is None or cpu_after is None or not figures.get("requests"):
        return None
    return round((cpu_after - cpu_before) * 1000 / figures["requests"], 3)
