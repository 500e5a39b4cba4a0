"""Fault figures: recovery after a Redis restart, 5xx while PostgreSQL drops every connection, and
how fast an open upstream breaker answers a submission.

    .venv/bin/python bench/faults.py --database-url postgres://postgres@127.0.0.1:5432/bench_faults

It recreates that database, starts a redis-server of its own on a free 127.0.0.1 port (no
persistence: a restart comes back empty), the mock API, gunicorn and ``manage.py rqworker-pool``
(--workers, each with --pool-size warm CLIs), as bench/run does, then:

1. redis: more slow jobs than workers, Redis killed (SIGKILL) and started again empty --down s
   later; from the moment it answers: every worker registered again (in rq's worker set, with a
   fresh heartbeat), the first lost job (queued when Redis died) completed, a job submitted after the
   restart completed, every job ended.
2. postgres: --threads clients submit distinct queries and read them back for --burst s while every
   connection of the database is terminated (pg_terminate_backend) twice; the 5xx replies (target 0)
   and how the burst's jobs ended.
3. breaker: a query whose upstream answers 529 opens the breaker (BREAKER_THRESHOLD failures); then
   --refusals submissions, timed one after another: p50 and max of the 503.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests
from figures import percentile
from procs import free_port, loadavg, say, wait_until
from stack import FINISHED, Gateway, Setup, post, prepare, start_gateway

WORKERS_KEY = "rq:workers"


class OwnRedis:
    """redis-server on a free port without persistence; ``kill`` is a crash, ``start`` comes back empty."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.workdir)]
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = self.client()
        wait_until(lambda: _pings(client), 10, "redis-server")

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.send_signal(signal.SIGKILL)  # a crash: no shutdown, no save
            proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)


def _pings(client: redis.Redis) -> bool:
    with contextlib.suppress(redis.RedisError):
        return bool(client.ping())
    return False


def registered_workers(client: redis.Redis, since: float) -> int:
    """Workers in rq's set whose hash has a birth and a heartbeat after ``since`` (epoch s)."""
    count = 0
    for key in client.smembers(WORKERS_KEY):
        birth, beat = client.hmget(key, "birth", "last_heartbeat")
        if birth and beat:
            when = calendar.timegm(time.strptime(beat.decode()[:19], "%Y-%m-%dT%H:%M:%S"))
            count += when >= int(since)
    return count


def _accepted(session: requests.Session, gateway: Gateway, query: str) -> str | None:
    response = session.post(f"{gateway.url}/api/query", json={"query": query}, timeout=30)
    return response.json()["jobId"] if response.status_code == 202 else None


def job_states(db: psycopg.Connection, ids: list[str]) -> dict[str, str]:
    rows = db.execute("SELECT id::text, state FROM queries_job WHERE id = ANY(%s::uuid[])", (ids,))
    return dict(rows.fetchall())


def redis_phase(setup: Setup, gateway: Gateway, own: OwnRedis, db: psycopg.Connection) -> dict[str, Any]:
    args = setup.args
    session = gateway.session()
    say(f"redis: {args.workers * 3} slow jobs, then Redis killed for {args.down} s and started empty")
    ids = [
        post(session, gateway.url, f"redis {uuid.uuid4()} [[mock:sleep=2]]")["jobId"]
        for _ in range(args.workers * 3)
    ]
    wait_until(lambda: "running" in job_states(db, ids).values(), 60, "a job to run")
    own.kill()
    lost = [i for i, state in job_states(db, ids).items() if state == "queued"]
    time.sleep(args.down)
    own.start()
    back, back_wall = time.monotonic(), time.time()
    client = own.client()
    after = wait_until(lambda: _accepted(session, gateway, f"after the restart {uuid.uuid4()}"), 30, "a 202")
    marks: dict[str, float] = {}
    while len(marks) < 4 and time.monotonic() - back < 180:
        now = time.monotonic() - back
        if "registered" not in marks and registered_workers(client, back_wall) == args.workers:
            marks["registered"] = now
        states = job_states(db, [*ids, after])
        if "lost_completed" not in marks and any(states.get(i) == "completed" for i in lost):
            marks["lost_completed"] = now
        if "after_completed" not in marks and states.get(after) == "completed":
            marks["after_completed"] = now
        if "all_ended" not in marks and all(state in FINISHED for state in states.values()):
            marks["all_ended"] = now
        time.sleep(0.05)
    states = job_states(db, [*ids, after])
    result = {
        "jobs": len(ids) + 1,
        "lost_with_redis": len(lost),
        **{f"{name}_s": round(value, 2) for name, value in marks.items()},
        "states": sorted(states.values()),
    }
    say(f"redis: {result}")
    return result


def postgres_phase(setup: Setup, gateway: Gateway, db: psycopg.Connection) -> dict[str, Any]:
    args = setup.args
    say(f"postgres: {args.threads} clients for {args.burst} s, every connection terminated twice")
    statuses: dict[int, int] = {}
    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        session = gateway.session()
        while not stop.is_set():
            response = session.post(
                f"{gateway.url}/api/query", json={"query": f"pg {n} {uuid.uuid4()}"}, timeout=30
            )
            codes = [response.status_code]
            if response.status_code == 202:
                job_id = response.json()["jobId"]
                with lock:
                    accepted.append(job_id)
                codes.append(session.get(f"{gateway.url}/api/query/{job_id}", timeout=30).status_code)
            with lock:
                for code in codes:
                    statuses[code] = statuses.get(code, 0) + 1

    name = db.execute("SELECT current_database()").fetchone()[0]
    terminated = []
    with ThreadPoolExecutor(args.threads) as executor:
        futures = [executor.submit(client, n) for n in range(args.threads)]
        for _ in range(2):
            time.sleep(args.burst / 3)
            rows = db.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchone()
            terminated.append(rows[0])
        time.sleep(args.burst / 3)
        stop.set()
        for future in futures:
            future.result()
    wait_until(
        lambda: all(s in FINISHED for s in job_states(db, accepted).values()), 300, "the burst's jobs", 0.5
    )
    ended = job_states(db, accepted)
    result = {
        "requests": sum(statuses.values()),
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "5xx": sum(n for code, n in statuses.items() if code >= 500),
        "connections_terminated": terminated,
        "jobs": len(accepted),
        "jobs_by_state": {s: list(ended.values()).count(s) for s in sorted(set(ended.values()))},
    }
    say(f"postgres: {result}")
    return result


def breaker_phase(setup: Setup, gateway: Gateway) -> dict[str, Any]:
    args = setup.args
    session = gateway.session()
    say("breaker: a query answered 529 upstream opens it")
    post(session, gateway.url, f"breaker {uuid.uuid4()} [[mock:error=529]]")

    def is_open() -> bool:
        return (
            session.get(f"{gateway.url}/ready", timeout=30).json()["components"]["upstream"]["state"]
            == "open"
        )

    wait_until(is_open, 120, "the breaker to open", 0.2)
    times, codes = [], set()
    for n in range(args.refusals):
        started = time.perf_counter()
        response = session.post(
            f"{gateway.url}/api/query", json={"query": f"refused {n} {uuid.uuid4()}"}, timeout=30
        )
        times.append((time.perf_counter() - started) * 1000)
        codes.add(response.status_code)
    result = {
        "refusals": len(times),
        "statuses": sorted(codes),
        "p50_ms": round(percentile(times, 50), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "max_ms": round(max(times), 1),
    }
    say(f"breaker: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", required=True, help="recreated: a bench database of its own")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=1)
    parser.add_argument("--down", type=float, default=2.0, help="seconds Redis stays away")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--burst", type=float, default=6.0, help="seconds of the PostgreSQL burst")
    parser.add_argument("--refusals", type=int, default=50)
    parser.add_argument("--phases", default="redis,postgres,breaker")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    # What stack.py's gateway reads from the benchmark's own options.
    args.concurrency, args.worker_fork, args.smoke = args.workers, False, False
    args.web_concurrency = args.web_threads = args.web_worker_class = None

    tmp = Path(tempfile.mkdtemp(prefix="gateway-faults-"))
    own = OwnRedis(tmp)
    own.start()
    setup = Setup(args=args, tmp=tmp, database_url=args.database_url, redis_url=own.url)
    figures: dict[str, Any] = {"load_before": loadavg()}
    try:
        key = prepare(setup)
        gateway = start_gateway(setup, key)
        with psycopg.connect(args.database_url, autocommit=True) as db:
            phases = args.phases.split(",")
            if "redis" in phases:
                figures["redis"] = redis_phase(setup, gateway, own, db)
            if "postgres" in phases:
                figures["postgres"] = postgres_phase(setup, gateway, db)
        if "breaker" in phases:
            figures["breaker"] = breaker_phase(setup, gateway)
    finally:
        setup.stop_all()
        own.kill()
    figures["load_after"] = loadavg()
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    say(f"logs in {tmp}")
    if figures.get("postgres", {}).get("5xx"):
        sys.exit("5xx replies while PostgreSQL dropped its connections")


if __name__ == "__main__":
    main()
