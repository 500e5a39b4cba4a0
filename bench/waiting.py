"""End-to-end latency for clients that wait without polling, and where the time goes.

Three kinds of waiting client, each sending sequential distinct queries (no cache hit):

- ``?wait=``: POST /api/query, then GET /api/query/{jobId}?wait=30 (again if it came back unfinished);
- the native stream: POST /api/query, then GET /api/query/{jobId}/stream until its final event;
- /v1/messages, plain (one JSON reply) and streamed (until ``message_stop``).

"At rest" sends each query once the warm pool is ready again and at least ``REST_GAP`` seconds after
the one before, as the bare CLI runs on an idle machine; "back to back" sends the next as soon as the
last is answered. Each run's steps come from the clocks that saw them (all wall clock, one machine):
the client's (submitted, answered), the job's row (created), rq's job hash (enqueued), the worker's
``timings`` on the job's final log line (claimed, prompt written, first event, the answer taken
from the result line or at the CLI's exit, row final, final event) and the mock's request log (the
upstream got the request). :func:`breakdown` gives the p50 of each step.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
import redis
import requests
from figures import percentile
from procs import say
from stack import FINISHED, Gateway, Setup, mock_request_log, post, wait_pool_ready
from stream import _first_text

REST_GAP = 1.0
TIMEOUT = 60.0
MODEL = "claude-sonnet-4-5"


def _final_body(session: requests.Session, url: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        response = session.get(f"{url}/api/query/{job_id}", params={"wait": 30}, timeout=TIMEOUT)
        body = response.json()
        if body.get("state") in FINISHED:
            return body
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} not finished after {TIMEOUT:g} s")


def wait_client(session: requests.Session, gateway: Gateway, query: str) -> str:
    job_id = post(session, gateway.url, query)["jobId"]
    body = _final_body(session, gateway.url, job_id)
    if body["state"] != "completed":
        raise RuntimeError(f"job {job_id} {body['state']}: {body.get('error')}")
    return job_id


def _sse_until(response: requests.Response, last: str) -> None:
    """Read an SSE reply up to the data of its ``last`` event."""
    _first_text(response, time.monotonic(), lambda event, data: event == last)


def stream_client(session: requests.Session, gateway: Gateway, query: str) -> str:
    job_id = post(session, gateway.url, query)["jobId"]
    url = f"{gateway.url}/api/query/{job_id}/stream"
    with session.get(url, stream=True, timeout=TIMEOUT) as response:
        _sse_until(response, "result")
    return job_id


def _messages(query: str, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": query}],
    }
    if stream:
        body["stream"] = True
    return body


def v1_client(session: requests.Session, gateway: Gateway, query: str) -> str:
    response = session.post(
        f"{gateway.url}/v1/messages", json=_messages(query, stream=False), timeout=TIMEOUT
    )
    if response.status_code != 200 or response.json().get("type") != "message":
        raise RuntimeError(f"/v1/messages: {response.status_code} {response.text[:300]}")
    return response.headers["x-gateway-job-id"]


def v1_stream_client(session: requests.Session, gateway: Gateway, query: str) -> str:
    body = _messages(query, stream=True)
    with session.post(f"{gateway.url}/v1/messages", json=body, stream=True, timeout=TIMEOUT) as response:
        _sse_until(response, "message_stop")
        return response.headers["x-gateway-job-id"]


# (row name, short tag in the queries, the client): each returns the job id once it has its answer.
CLIENTS: tuple[tuple[str, str, Callable[[requests.Session, Gateway, str], str]], ...] = (
    ("GET ?wait=", "wait", wait_client),
    ("native stream", "stream", stream_client),
    ("/v1/messages", "v1", v1_client),
    ("/v1/messages stream", "v1s", v1_stream_client),
)
MODES = ("rest", "back_to_back")


def measure(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    n = setup.args.latency_n
    say(f"waiting clients: {n} sequential queries each, at rest and back to back, {len(CLIENTS)} clients")
    return {"waiting": waiting_latency(setup, gateway, f"{run_id}", n)}


def waiting_latency(setup: Setup, gateway: Gateway, tag: str, n: int) -> dict[str, Any]:
    """Every client, at rest then back to back: latency figures and the step breakdown."""
    results: dict[str, Any] = {}
    samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for name, short, client in CLIENTS:
        results[name] = {}
        for mode in MODES:
            runs = run_client(setup, gateway, client, f"{tag}-{short}-{mode}", n, rest=mode == "rest")
            samples[mode] += runs
            results[name][mode] = summary([r["seconds"] for r in runs if "seconds" in r], runs)
    steps = {mode: breakdown(setup, runs) for mode, runs in samples.items()}
    return {"clients": results, "breakdown": steps}


def run_client(
    setup: Setup,
    gateway: Gateway,
    client: Callable[[requests.Session, Gateway, str], str],
    tag: str,
    n: int,
    *,
    rest: bool,
) -> list[dict[str, Any]]:
    session = gateway.session()
    runs: list[dict[str, Any]] = []
    last_start = 0.0
    for i in range(n):
        if rest:
            if gateway.workers is not None:
                wait_pool_ready(setup, gateway.workers, timeout=60)
            time.sleep(max(0.0, last_start + REST_GAP - time.monotonic()))
        marker = f"wq-{tag}-{i}"
        last_start = time.monotonic()
        submitted = time.time()
        try:
            job_id = client(session, gateway, f"{marker}: what is {i}+{i}?")
        except (RuntimeError, requests.RequestException, KeyError) as exc:
            runs.append({"marker": marker, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        answered = time.time()
        runs.append(
            {
                "marker": marker,
                "job_id": job_id,
                "submitted": submitted,
                "answered": answered,
                "seconds": time.monotonic() - last_start,
            }
        )
    return runs


def summary(seconds: list[float], runs: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["error"] for r in runs if "error" in r]
    return {
        "n": len(runs),
        "times": [round(t, 4) for t in seconds],
        "p50": percentile(seconds, 50),
        "p95": percentile(seconds, 95),
        "mean": statistics.fmean(seconds) if seconds else float("nan"),
        "errors": errors[:5],
        "failed": len(errors),
    }


# --- the breakdown --------------------------------------------------------------------------------

# (step, from, to): the names of the timestamps each run has (see _timestamps).
STEPS = (
    ("submit → job row created", "submitted", "created"),
    ("row created → on its rq queue", "created", "enqueued"),
    ("queued → claimed by a worker", "enqueued", "claimed"),
    ("  of which: queued → the job function runs", "enqueued", "job_run"),
    ("claimed → prompt written to the CLI", "claimed", "cli_started"),
    ("prompt written → upstream got the request", "cli_started", "upstream"),
    ("upstream request → first text at the worker", "upstream", "first_event"),
    ("first text → the answer (the result line, or the CLI's exit)", "first_event", "answer"),
    ("  runs answered before the CLI exited", "first_event", "cli_answered"),
    ("the answer → row final", "answer", "recorded"),
    ("  of which: the session kept", "answer", "session_recorded"),
    ("  of which: the answer cached", "session_recorded", "cached"),
    ("  of which: the final state written", "cached", "recorded"),
    ("row final → final event in Redis", "recorded", "final_event"),
    ("final event → client answered", "final_event", "answered"),
)


def breakdown(setup: Setup, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The p50 of each step over the runs (milliseconds), and how many runs had both ends of it."""
    stamps = _timestamps(setup, [r for r in runs if "job_id" in r])
    steps: dict[str, Any] = {}
    for name, start, end in STEPS:
        ms = [(s[end] - s[start]) * 1000 for s in stamps if start in s and end in s]
        steps[name] = {"p50_ms": percentile(ms, 50), "n": len(ms)}
    total = [(s["answered"] - s["submitted"]) * 1000 for s in stamps]
    steps["total (client clock)"] = {"p50_ms": percentile(total, 50), "n": len(total)}
    return steps


def _timestamps(setup: Setup, runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    timings = worker_timings(setup)
    upstream = mock_arrivals(setup)
    rq_redis = redis.Redis.from_url(setup.redis_url)
    found = []
    with psycopg.connect(setup.database_url, autocommit=True) as db:
        for run in runs:
            stamps = {"submitted": run["submitted"], "answered": run["answered"]}
            row = db.execute(
                "SELECT created_at, rq_job_id FROM queries_job WHERE id = %s", (run["job_id"],)
            ).fetchone()
            if row is not None:
                stamps["created"] = row[0].timestamp()
                enqueued = rq_redis.hget(f"rq:job:{row[1] or run['job_id']}", "enqueued_at")
                if enqueued:
                    stamps["enqueued"] = _rq_time(enqueued.decode())
            stamps.update(timings.get(run["job_id"], {}))
            # Taken from the result line while the CLI ran (queries.services.run), or after its exit.
            answer = stamps.get("cli_answered", stamps.get("cli_exited"))
            if answer is not None:
                stamps["answer"] = answer
            if run["marker"] in upstream:
                stamps["upstream"] = upstream[run["marker"]]
            found.append(stamps)
    return found


def _rq_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def worker_timings(setup: Setup) -> dict[str, dict[str, float]]:
    """The ``timings`` of each job's final log line (queries.services.run), by job id."""
    found: dict[str, dict[str, float]] = {}
    for path in setup.tmp.glob("workers*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if '"timings"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("jobId") and isinstance(entry.get("timings"), dict):
                found[entry["jobId"]] = entry["timings"]
    return found


def mock_arrivals(setup: Setup) -> dict[str, float]:
    """When the mock got the first Messages request of each query, by its marker (``wq-…``)."""
    found: dict[str, float] = {}
    path = mock_request_log(setup)
    if not path.exists():
        return found
    for line in path.read_text(errors="replace").splitlines():
        entry = json.loads(line)
        prompt = entry.get("prompt") or ""
        start = prompt.find("wq-")
        if start >= 0:
            marker = prompt[start:].split(":", 1)[0]
            found.setdefault(marker, entry["t"])
    return found
