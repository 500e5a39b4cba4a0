"""Streaming: the first streamed token against the bare CLI's, and idle open streams held by the web.

``first_token`` (workers running): the time from a client's request to its first text delta,
through the native stream (POST /api/query, then GET /api/query/{jobId}/stream), beside the bare
CLI's first ``stream_event`` text delta (cold, ``claude -p --output-format stream-json --verbose
--include-partial-messages``) in the same run. Other APIs add their rows to FIRST_TOKEN_APIS: a
name, the URL path and a function of the run's index giving the request body; their reply must be
an SSE stream (Anthropic's ``content_block_delta`` events or OpenAI's ``chat.completion.chunk``).

``idle_streams`` (after submit.measure stopped the workers): N distinct queries stay queued, a
client holds N native streams open on them, and the web's memory is read before and after, while
wrk measures cache hits on /api/query beside them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from cache import WRK_SAME, cpu_ms_per_request
from figures import percentile
from procs import descendants, memory_kib, say, tree_cpu
from stack import CLAUDE, Gateway, Setup, cli_env, post, wait_pool_ready, wait_result
from wrk import wrk

BARE_ARGV = [
    str(CLAUDE),
    "--print",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
    "--strict-mcp-config",
    "--",
]
# (row name, URL path, body of the i-th request): each a distinct query, so none is a cache hit.
FIRST_TOKEN_APIS: list[tuple[str, str, Callable[[str, int], dict[str, Any]]]] = []


def first_token(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    n = setup.args.stream_n
    say(f"first streamed token: {n} bare CLI runs, {n} native streams")
    bare = [bare_first_token(setup, f"ft bare {run_id} {i}: what is {i}+{i}?") for i in range(n)]
    native = [
        at_rest(setup, gateway, native_first_token, f"ft native {run_id} {i}: what is {i}+{i}?")
        for i in range(n)
    ]
    rows: dict[str, Any] = {"bare": summary(bare), "native": summary(native)}
    for name, path, body in FIRST_TOKEN_APIS:
        rows[name] = summary(
            [at_rest(setup, gateway, sse_first_token, path, body(run_id, i)) for i in range(n)]
        )
    return {"first_token": rows}


def at_rest(setup: Setup, gateway: Gateway, measure: Callable[..., float], *args: Any) -> float:
    """One request once the warm pool is ready again, as the bare CLI starts on an idle machine."""
    if gateway.workers is not None:
        wait_pool_ready(setup, gateway.workers)
    return measure(gateway, *args)


def summary(seconds: list[float]) -> dict[str, Any]:
    return {"n": len(seconds), "p50": percentile(seconds, 50), "p90": percentile(seconds, 90)}


def bare_first_token(setup: Setup, prompt: str) -> float:
    """Seconds from starting the CLI to its first text delta on stdout."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [*BARE_ARGV, prompt],
        cwd=Path(setup.env["CLAUDE_WORKDIR"]),
        env=cli_env(setup),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    first = None
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if first is None and event.get("type") == "stream_event":
            delta = event["event"].get("delta") or {}
            if delta.get("type") == "text_delta":
                first = time.monotonic() - started
    if proc.wait() != 0 or first is None:
        raise RuntimeError(f"the bare CLI failed or streamed no text (exit {proc.returncode})")
    return first


def native_first_token(gateway: Gateway, query: str) -> float:
    """Seconds from POST /api/query to the first ``text`` event of the job's native stream."""
    session = gateway.session()
    started = time.monotonic()
    job = post(session, gateway.url, query)
    with session.get(f"{gateway.url}/api/query/{job['jobId']}/stream", stream=True, timeout=60) as response:
        return _first_text(response, started, lambda event, data: event == "text")


def sse_first_token(gateway: Gateway, path: str, body: dict[str, Any]) -> float:
    """Seconds from POSTing ``body`` to ``path`` to the first text delta of its SSE reply."""
    session = gateway.session()
    started = time.monotonic()
    with session.post(f"{gateway.url}{path}", json=body, stream=True, timeout=60) as response:
        return _first_text(response, started, _is_text_delta)


def _is_text_delta(event: str | None, data: dict[str, Any]) -> bool:
    if event == "content_block_delta":
        return (data.get("delta") or {}).get("type") == "text_delta"
    choices = data.get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


def _first_text(
    response: requests.Response, started: float, is_text: Callable[[str | None, Any], bool]
) -> float:
    if response.status_code != 200:
        raise RuntimeError(f"stream: {response.status_code} {response.text[:300]}")
    buffer, event = b"", None
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            text = line.decode().rstrip("\r")
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: ") and text[6:].startswith("{"):
                if is_text(event, json.loads(text[6:])):
                    return time.monotonic() - started
            elif not text:
                event = None
    raise RuntimeError("the stream ended without a text delta")


def _cached_query(run_id: str) -> str:
    return f"stream hits {run_id}: what is 2+2?"


def prepare_cached(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    """Answer the query the idle-streams phase hits the cache with, while workers run: after the
    recovery measurement, whose Redis restart emptied the cache."""
    session = gateway.session()
    job = post(session, gateway.url, _cached_query(run_id))
    wait_result(session, gateway.url, job["jobId"], interval=0.02)
    return {}


def check_cached(gateway: Gateway, run_id: str) -> None:
    """wrk beside the streams must measure cache hits, not submissions joined to a queued job."""
    again = post(gateway.session(), gateway.url, _cached_query(run_id))
    if not again.get("cached"):
        raise RuntimeError(f"the idle streams' query is not a cache hit: {again}")


# --- idle streams -----------------------------------------------------------------------------------


def idle_streams(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    """N streams held open on queued jobs (the workers are stopped), with wrk cache hits beside."""
    if gateway.workers is not None:  # queued jobs must stay queued
        setup.stop(gateway.workers)
        gateway.workers = None
    n, hold = setup.args.streams_n, setup.args.streams_hold
    say(f"idle streams: {n} held open for {hold:g} s on queued jobs, with wrk cache hits beside them")
    check_cached(gateway, run_id)
    session = gateway.session()
    job_ids = [post(session, gateway.url, f"idle {run_id} {i}: wait for me")["jobId"] for i in range(n)]
    before = web_rss_kib(gateway)
    holder = StreamHolder(gateway, job_ids)
    holder.start()
    if not holder.ready.wait(120):
        raise RuntimeError("the streams did not open within 120 s")
    opened = web_rss_kib(gateway)
    script = WRK_SAME.format(body=json.dumps(json.dumps({"query": _cached_query(run_id)})), key=gateway.key)
    cpu = tree_cpu(gateway.web.pid)
    hits = wrk(setup, gateway.url, script, "cache-with-streams", duration=max(1, round(hold)))
    cpu_per_hit = cpu_ms_per_request(gateway.web.pid, cpu, hits)
    after = web_rss_kib(gateway)
    holder.release.set()
    holder.join(60)
    return {
        "idle_streams": {
            "n": n,
            "opened": holder.opened,
            "open_at_end": holder.open_at_end,
            "hold_s": hold,
            "web_rss_before_kib": before,
            "web_rss_open_kib": opened,
            "web_rss_after_kib": after,
            "cache_hits_per_second": hits["per_second"],
            "cache_hits_non_2xx": hits["non_2xx"],
            "cache_hits_p99_ms": hits.get("p99_ms"),
            "web_cpu_ms_per_hit": cpu_per_hit,
        }
    }


def web_rss_kib(gateway: Gateway) -> int:
    """RSS of gunicorn's master and its workers."""
    return sum(memory_kib(pid)[0] for pid in [gateway.web.pid, *descendants(gateway.web.pid)])


class StreamHolder(threading.Thread):
    """Opens one native stream per job from an asyncio loop, waits for each to start, holds them
    until ``release``, then counts those still open."""

    def __init__(self, gateway: Gateway, job_ids: list[str]) -> None:
        super().__init__(daemon=True)
        parts = urlsplit(gateway.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.key, self.job_ids = gateway.key, job_ids
        self.ready, self.release = threading.Event(), threading.Event()
        self.opened = self.open_at_end = 0

    def run(self) -> None:
        asyncio.run(self._hold())

    async def _open(self, job_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(
            f"GET /api/query/{job_id}/stream HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.key}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            return None
        await reader.readuntil(b"retry: ")  # the stream's first line: it has started
        return reader, writer

    async def _hold(self) -> None:
        opening = (self._open(job_id) for job_id in self.job_ids)
        results = await asyncio.gather(*opening, return_exceptions=True)
        streams = [r for r in results if isinstance(r, tuple)]
        self.opened = len(streams)
        self.ready.set()
        while not self.release.is_set():
            await asyncio.sleep(0.1)
        # Still open: nothing but keep-alive comments could have arrived, and no end of stream.
        self.open_at_end = sum(1 for reader, _ in streams if not reader.at_eof())
        for _, writer in streams:
            writer.close()
