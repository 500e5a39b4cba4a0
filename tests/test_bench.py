"""The benchmark's smoke run: every measurement works end to end, with tiny counts.

The figures of a smoke run mean nothing (counts of two or three, wrk for one second); the full run
is ``bench/run`` on a quiet machine. This only proves the command works: it starts the mock API,
gunicorn, the rq worker pool with its warm CLIs and the bare Django view, measures, and writes its
table and raw figures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from django.conf import settings

from tests.support import REPO
from tests.support.processes import database_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420), pytest.mark.usefixtures("redis_db")]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (.ci/run installs it)")
def test_the_benchmark_runs_every_measurement_and_writes_its_table(tmp_path):
    # A database of its own next to the suite's: the benchmark drops and recreates it.
    bench_database_url = database_url(suffix="_bench")
    out = tmp_path / "bench.md"
    done = subprocess.run(
        [
            sys.executable,
            "bench/gateway_bench.py",
            "--smoke",
            "--database-url",
            bench_database_url,
            "--redis-url",
            settings.REDIS_URL,
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert out.read_text() in done.stdout  # printed and written

    table = out.read_text()
    for measurement in (
        "End-to-end latency p50, sequential at rest",
        "back to back",
        "E2E p50 / p95, GET ?wait=, at rest",
        "E2E p50 / p95, native stream, back to back",
        "E2E p50 / p95, /v1/messages, at rest",
        "E2E p50 / p95, /v1/messages stream, at rest",
        "step p50: prompt written → upstream got the request",
        "step p50: final event → client answered",
        "Recovery: SIGKILL of an rq worker and its CLIs",
        "Recovery: the benchmark's Redis restarted (empty)",
        "claude_cli_pool_* after the recovery runs",
        "E2E p50 / p95 after recovery, GET ?wait=, at rest",
        "Burst of",
        "QUEUE_CONCURRENCY=2, rqworker-pool",
        "QUEUE_CONCURRENCY=2, separate rqworker processes",
        "Cache hits, wrk 16 connections",
        "Cache-hit latency p50 / p99",
        "Cache hits recorded",
        "Submissions missing the cache",
        "Gateway CPU per job",
        "Memory per warm CLI",
        "Conversation of 3 turns: upstream request bytes",
        "Input tokens per turn (uncached+reads), resumed",
        "Latency of a later turn p50: resumed",
        "First streamed token p50, native",
        "First streamed token p50, /v1/messages",
        "First streamed token p50, /v1/chat/completions",
        "Cache hits, /v1/messages",
        "Idle streams held open on queued jobs",
        "Cache hits on /api/query with the streams open",
        "Load average at start",
    ):
        assert measurement in table, measurement

    raw = json.loads(out.with_suffix(".json").read_text())
    hits = raw["cache_gateway"]
    assert hits["requests"] > 0 and hits["non_2xx"] == 0
    assert hits["requests"] <= hits["recorded"] <= hits["requests"] + raw["config"]["wrk_connections"]
    assert raw["cache_bare"]["requests"] > 0
    # The burst ran with both ways of running the workers, every job answered.
    assert set(raw["burst_modes"]) == {"pool", "separate"}
    assert all(m["median"]["n"] == raw["burst"]["n"] > 0 for m in raw["burst_modes"].values())
    submitted = raw["submissions"]
    assert submitted["non_2xx"] == 0 and submitted["jobs_created"] >= submitted["requests"] > 0
    assert raw["burst"]["clis_reaped"] >= raw["burst"]["n"]  # each job took a CLI of its own
    assert raw["memory"]["warm_clis"]["count"] >= raw["config"]["concurrency"]
    conversation = raw["conversation"]
    assert conversation["resumed_summary"]["modes"] == ["fresh", "resumed", "resumed"]
    assert conversation["flat_summary"]["modes"] == ["fresh", "fresh", "fresh"]
    # Resumed, a later turn reads the whole earlier conversation from the prompt cache.
    last = conversation["resumed"][-1]
    assert last["cache_read"] > conversation["flat"][-1]["cache_read"]
    assert raw["first_token"]["native"]["n"] == raw["first_token"]["bare"]["n"] > 0
    assert raw["v1_cache"]["v1_messages"]["requests"] > 0 and raw["v1_cache"]["v1_messages"]["non_2xx"] == 0
    streams = raw["idle_streams"]
    assert streams["opened"] == streams["open_at_end"] == streams["n"] > 0
    assert streams["cache_hits_per_second"] > 0 and streams["cache_hits_non_2xx"] == 0
