"""End-to-end latency (POST, then GET until the result is visible) of sequential distinct queries:
"at rest" waits for the warm pool to be ready again between queries, "back to back" does not."""

from __future__ import annotations

import statistics
import time
from typing import Any

from figures import percentile
from procs import say
from stack import Gateway, Setup, post, wait_final, wait_pool_ready


def measure(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    n = setup.args.latency_n
    say(f"latency: {n} sequential queries at rest")
    rest = gateway_latency(setup, gateway, n, run_id, rest=True, label="quiet")
    say(f"latency: {n} sequential queries back to back")
    wait_pool_ready(setup, gateway.workers)
    back_to_back = gateway_latency(setup, gateway, n, run_id, rest=False, label="busy")
    return {"latency_rest": rest, "latency_back_to_back": back_to_back}


def gateway_latency(
    setup: Setup, gateway: Gateway, n: int, run_id: str, *, rest: bool, label: str
) -> dict[str, Any]:
    session = gateway.session()
    times = []
    for i in range(n):
        if rest and gateway.workers is not None:
            wait_pool_ready(setup, gateway.workers)
        started = time.monotonic()
        job = post(session, gateway.url, f"latency {label} {run_id} {i}: what is {i}+{i}?")
        # The client waits with ?wait=: the answer comes as soon as the job is final.
        body = wait_final(session, gateway.url, job["jobId"])
        times.append(time.monotonic() - started)
        if body["state"] != "completed":
            raise RuntimeError(f"job {job['jobId']} {body['state']}: {body.get('error')}")
    return {
        "times": [round(t, 4) for t in times],
        "n": n,
        "p50": percentile(times, 50),
        "p95": percentile(times, 95),
        "mean": statistics.fmean(times),
    }
