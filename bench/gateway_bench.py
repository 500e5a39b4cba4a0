"""The gateway against the bare Claude CLI, measured side by side in one run on one machine.

    bench/run                       # the full run (a few minutes); bench/run --help for the knobs
    bench/run --smoke               # tiny counts: checks that every measurement works

It starts everything itself, on free ports, with a fresh PostgreSQL database and an emptied Redis
database: the project's mock Anthropic API (tests/mockapi.py, answering at once), the real CLI
(node_tools/), gunicorn with the production settings and QUEUE_CONCURRENCY rq workers, as
scripts/serve runs them (``--workers``: one ``manage.py rqworker-pool`` by default, or separate
``manage.py rqworker --with-scheduler`` processes). Then it measures:

1. the bare CLI: cold latency of sequential runs, and the throughput of ``xargs -P QUEUE_CONCURRENCY``;
2. end-to-end latency (POST, then GET until the result is visible) of sequential distinct queries:
   "at rest" waits for the warm pool to be ready again between queries (as the bare CLI runs one at
   a time on an idle machine), "back to back" does not;
3. a burst of distinct queries submitted at once, until all are answered (jobs/s), beside
   ``xargs -P``, once with the workers as started and once run the other way (rqworker-pool, or
   separate rqworker processes; ``--burst-rounds`` repeats both with a bare run beside each round);
   the gateway's own CPU per job during it (web and worker processes, work horses included, the CLI
   and its MCP servers excluded) and the CLI's, and the jobs' phases read from their rows;
4. memory (RSS and PSS) per process at rest;
5. cache hits with wrk at 16 connections, beside a bare Django view (bench/bare_app.py) served by the
   same gunicorn settings, checking every request was recorded (one QueryRequest row each),
   and cache hits on /v1/messages beside /api/query's (bench/v1.py);
6. the first streamed token through the native stream, /v1/messages and /v1/chat/completions beside
   the bare CLI's first text delta (bench/stream.py; bench/v1.py adds the /v1/ rows);
7. a conversation of 10 turns resumed (``sessionId``) against the same turns replayed flat: upstream
   request bytes and input tokens per turn (the mock reports prompt-cache usage), and the latency of
   a resumed turn against a fresh one (bench/conversation.py);
8. submissions that miss the cache with no worker running (only the submit path), with wrk;
9. idle native streams held open on queued jobs, with the web's memory and cache hits beside them.

It prints a table and writes it (Markdown, plus the raw figures as JSON) under bench/results/.
Figures depend on the machine and on what else runs: it prints the load average at the start and
the end, and each ratio compares figures taken minutes apart in the same run.

Each measurement is a module of its own beside this script (latency.py, burst.py, ...) whose
``measure`` returns its figures under the keys that report.py renders, one table section each; this
script parses the options, starts the stack (stack.py), runs the measurements in the order of
BEFORE_GATEWAY and WITH_GATEWAY, and writes the report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# bench/, the script's own directory
import bare
import burst
import cache
import conversation
import latency
import memory
import pool
import recovery
import stream
import submit
import v1  # adds the /v1/ APIs' rows to stream.FIRST_TOKEN_APIS
import waiting
from procs import loadavg, say
from report import machine, report
from stack import CLAUDE, REPO, WORKER_MODES, Setup, prepare, start_gateway, start_own_redis

RESULTS = REPO / "bench" / "results"

# The measurements, in the order they run, each with the --only phase it belongs to (None: every
# run) and a function returning its figures under the keys report.py reads. The bare CLI runs before
# the gateway starts, as measure(setup, run_id); the others as measure(setup, gateway, run_id).
BEFORE_GATEWAY = (
    ("latency", bare.sequential),
    ("waiting", bare.sequential),
    ("recovery", bare.sequential),
    ("burst", bare.parallel),
)
WITH_GATEWAY = (
    ("latency", latency.measure),
    ("waiting", waiting.measure),
    ("burst", burst.measure),
    (None, memory.measure),
    (None, pool.measure),
    ("cache", cache.measure),
    ("cache", v1.cache_hits),
    ("stream", stream.first_token),
    ("conversation", conversation.measure),
    ("recovery", recovery.measure),  # kills a worker and restarts Redis (--own-redis)
    ("stream", stream.prepare_cached),  # the idle streams' cache hit, after Redis restarted empty
    ("submit", submit.measure),  # stops the workers: only what needs none follows
    ("stream", stream.idle_streams),
)
PHASES = tuple(dict.fromkeys(phase for phase, _ in BEFORE_GATEWAY + WITH_GATEWAY if phase))
CONFIG = (
    "concurrency",
    "pool_size",
    "web_concurrency",
    "web_threads",
    "web_worker_class",
    "worker_fork",
    "workers",
    "burst_rounds",
    "wrk_connections",
    "wrk_threads",
    "wrk_duration",
    "poll_interval",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, to check that it all works")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("QUEUE_CONCURRENCY", 5)))
    parser.add_argument("--pool-size", type=int, default=int(os.environ.get("CLAUDE_POOL_SIZE", 1)))
    parser.add_argument("--latency-n", type=int, default=20, help="sequential queries (each kind)")
    parser.add_argument("--bare-n", type=int, default=10, help="sequential bare CLI runs")
    parser.add_argument("--burst-n", type=int, default=30, help="queries in the burst, and xargs runs")
    parser.add_argument("--stream-n", type=int, default=10, help="first-token runs (bare CLI and each API)")
    parser.add_argument("--streams-n", type=int, default=500, help="idle streams held open")
    parser.add_argument("--streams-hold", type=float, default=20.0, help="seconds the idle streams are held")
    parser.add_argument("--wrk-duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--wrk-connections", type=int, default=16)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--poll-interval", type=float, default=0.005, help="seconds between result polls")
    parser.add_argument("--web-concurrency", type=int, help="WEB_CONCURRENCY (default: gunicorn.conf.py's)")
    parser.add_argument("--web-threads", type=int, help="WEB_THREADS (default: gunicorn.conf.py's)")
    parser.add_argument("--web-worker-class", help="gunicorn --worker-class instead of gunicorn.conf.py's")
    parser.add_argument("--worker-fork", action="store_true", help="WORKER_FORK=true: a work horse per job")
    parser.add_argument(
        "--workers",
        choices=WORKER_MODES,
        default="pool",
        help="how the rq workers run: one rqworker-pool (as scripts/serve), or QUEUE_CONCURRENCY separate"
        " rqworker --with-scheduler processes; the burst is measured both ways (default %(default)s)",
    )
    parser.add_argument(
        "--burst-rounds",
        type=int,
        default=1,
        help="bursts per way of running the workers, each round with a bare xargs -P run of its own"
        " beside it when more than 1 (the median is reported)",
    )
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@127.0.0.1:5432/gateway_bench",
        help="a database to DROP and create afresh (default %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/14",
        help="a Redis database to empty (default %(default)s)",
    )
    parser.add_argument(
        "--own-redis",
        action="store_true",
        help="run a redis-server of the benchmark's own on a free port instead of --redis-url"
        " (always so with the recovery measurement, which restarts it)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PHASES,
        default=list(PHASES),
        help="run only these measurements (the bare CLI runs with latency, waiting, recovery and burst)",
    )
    parser.add_argument(
        "--out", type=Path, help="the Markdown report (default bench/results/bench-<time>.md)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.latency_n, args.bare_n, args.burst_n, args.wrk_duration = 2, 2, 3, 1
        args.stream_n, args.streams_n, args.streams_hold = 2, 20, 2.0
        args.concurrency = min(args.concurrency, 2)
    return args


def check_tools() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    if not Path("/usr/bin/time").exists():
        raise SystemExit("GNU time is not installed at /usr/bin/time (Debian: apt-get install time)")
    if not CLAUDE.exists():
        raise SystemExit(f"the Claude CLI is not installed at {CLAUDE} (scripts/bootstrap)")


def run_measurements(setup: Setup, run_id: str) -> dict[str, Any]:
    """Prepare the stack, run the bare CLI, start the gateway and measure it; returns the figures."""
    phases = set(setup.args.only)
    if setup.args.own_redis or "recovery" in phases:
        start_own_redis(setup)
    key = prepare(setup)
    results: dict[str, Any] = {}
    done = set()
    for phase, measure in BEFORE_GATEWAY:
        if phase in phases and measure not in done:
            done.add(measure)
            results.update(measure(setup, run_id))
    gateway = start_gateway(setup, key)
    for phase, measure in WITH_GATEWAY:
        if phase is None or phase in phases:
            results.update(measure(setup, gateway, run_id))
    return results


def write_report(results: dict[str, Any], out: Path | None, tmp: Path) -> None:
    """Print the report, and write it with the raw figures beside it as JSON."""
    text = report(results)
    print()
    print(text)
    out = out or RESULTS / f"bench-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    print(f"written to {out} (raw figures: {out.with_suffix('.json')}); logs in {tmp}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools()
    run_id = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    setup = Setup(args=args, tmp=tmp, database_url=args.database_url, redis_url=args.redis_url)
    results: dict[str, Any] = {
        "machine": machine(),
        "load_start": loadavg(),
        "config": {k: getattr(args, k) for k in CONFIG},
    }
    say(f"machine: {results['machine']}; logs in {tmp}")
    try:
        results.update(run_measurements(setup, run_id))
    finally:
        setup.stop_all()
    results["load_end"] = loadavg()
    results["finished_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    write_report(results, args.out, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
