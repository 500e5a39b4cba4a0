"""The /v1/ APIs: first streamed token through /v1/messages and /v1/chat/completions (each a cold CLI
run: distinct prompts), and /v1/messages cache hits with wrk beside /api/query's in the same run."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import redis
import requests
from figures import percentile
from procs import say, wait_until
from stack import Gateway, Setup, post, wait_result
from wrk import wrk, wrk_warm_up

MODEL = "claude-sonnet-4-5"
WRK_POST = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def _first_text(url: str, path: str, body: dict[str, Any], key: str, anthropic: bool) -> float:
    """Seconds from sending the request to the first SSE line that carries answer text."""
    headers = {"Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    started = time.perf_counter()
    with requests.post(f"{url}{path}", json=body, headers=headers, stream=True, timeout=120) as response:
        if response.status_code != 200:
            raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:300]}")
        for line in response.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            data = json.loads(line[6:])
            if anthropic and data.get("type") == "content_block_delta" and data["delta"].get("text"):
                return time.perf_counter() - started
            if not anthropic and data.get("choices") and data["choices"][0]["delta"].get("content"):
                return time.perf_counter() - started
            if "error" in data:
                raise RuntimeError(f"POST {path}: {data['error']}")
    raise RuntimeError(f"POST {path}: the stream ended without text")


def first_tokens(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    """First streamed token, sequential distinct prompts, through each API."""
    n = 2 if setup.args.smoke else setup.args.latency_n
    say(f"/v1 first streamed token: {n} cold streamed calls through each API")
    figures: dict[str, Any] = {}
    for name, path, anthropic in (
        ("messages", "/v1/messages", True),
        ("chat", "/v1/chat/completions", False),
    ):
        seconds = []
        for i in range(n):
            messages = [{"role": "user", "content": f"v1 {name} {run_id} {i}: what is 2+2?"}]
            body: dict[str, Any] = {"model": MODEL, "messages": messages, "stream": True}
            if anthropic:
                body["max_tokens"] = 64
            seconds.append(_first_text(gateway.url, path, body, gateway.key, anthropic))
            time.sleep(0.3)  # the warm pool replaces the CLI it used
        figures[name] = {
            "n": n,
            "p50_s": statistics.median(seconds),
            "p90_s": percentile(seconds, 90),
            "mean_s": statistics.fmean(seconds),
        }
    return {"v1_first_token": figures}


def cache_hits(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    """wrk on a /v1/messages cache hit, then on an /api/query one, same connections and duration."""
    say(f"/v1/messages cache hits: wrk {setup.args.wrk_duration} s, then /api/query's")
    question = f"v1 cache {run_id}: what is 2+2?"
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": question}]}
    headers = {"Authorization": f"Bearer {gateway.key}"}
    first = requests.post(f"{gateway.url}/v1/messages", json=body, headers=headers, timeout=120)
    again = requests.post(f"{gateway.url}/v1/messages", json=body, headers=headers, timeout=30)
    if first.status_code != 200 or again.headers.get("x-gateway-outcome") != "cached":
        raise RuntimeError(
            f"/v1/messages was not answered from the cache: {again.status_code} {again.text[:200]}"
        )
    native_query = f"native cache {run_id}: what is 2+2?"
    session = gateway.session()
    wait_result(session, gateway.url, post(session, gateway.url, native_query)["jobId"], interval=0.02)
    journal = redis.Redis.from_url(setup.redis_url)
    results = {}
    for name, path, payload in (
        ("v1_messages", "/v1/messages", body),
        ("api_query", "/api/query", {"query": native_query}),
    ):
        script = WRK_POST.format(body=json.dumps(json.dumps(payload)), key=gateway.key)
        wrk_warm_up(setup, gateway.url, script, f"cache-{name}", path=path)
        wait_until(lambda: journal.xlen("journal:requests") == 0, 60, "the request journal to drain")
        results[name] = wrk(setup, gateway.url, script, f"cache-{name}", path=path)
    return {"v1_cache": results}


def measure(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    return {**first_tokens(setup, gateway, run_id), **cache_hits(setup, gateway, run_id)}
