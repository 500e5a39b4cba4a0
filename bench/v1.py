"""The /v1/ APIs in the benchmark: first streamed token through /v1/messages and /v1/chat/completions
(rows of bench/stream.py's first-token table, beside the bare CLI's), and /v1/messages cache hits with
wrk beside /api/query's, in the same run."""

from __future__ import annotations

import json
from typing import Any

import redis
import requests
from procs import say, wait_until
from stack import Gateway, Setup, post, wait_result
from stream import FIRST_TOKEN_APIS
from wrk import wrk, wrk_warm_up

MODEL = "claude-sonnet-4-5"
WRK_POST = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def _messages_body(run_id: str, i: int) -> dict[str, Any]:
    text = f"ft v1 messages {run_id} {i}: what is {i}+{i}?"
    return {"model": MODEL, "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": text}]}


def _chat_body(run_id: str, i: int) -> dict[str, Any]:
    text = f"ft v1 chat {run_id} {i}: what is {i}+{i}?"
    return {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": text}]}


FIRST_TOKEN_APIS.extend(
    [
        ("/v1/messages", "/v1/messages", _messages_body),
        ("/v1/chat/completions", "/v1/chat/completions", _chat_body),
    ]
)


def cache_hits(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    """wrk on a /v1/messages cache hit, then on an /api/query one: same connections and duration."""
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
    native_query = f"v1 native cache {run_id}: what is 2+2?"
    session = gateway.session()
    wait_result(session, gateway.url, post(session, gateway.url, native_query)["jobId"], interval=0.02)
    journal = redis.Redis.from_url(setup.redis_url)
    results = {}
    for name, path, payload in (
        ("v1_messages", "/v1/messages", body),
        ("api_query", "/api/query", {"query": native_query}),
    ):
        script = WRK_POST.format(body=json.dumps(json.dumps(payload)), key=gateway.key)
        wrk_warm_up(setup, gateway.url, script, f"v1-cache-{name}", endpoint=path)
        wait_until(lambda: journal.xlen("journal:requests") == 0, 60, "the request journal to drain")
        results[name] = wrk(setup, gateway.url, script, f"v1-cache-{name}", endpoint=path)
    return {"v1_cache": results}
