"""The gateway against the bare Claude CLI, measured side by side in one run on one machine.

    bench/run                       # the full run (a few minutes); bench/run --help for the knobs
    bench/run --smoke               # tiny counts: checks that every measurement works

It starts everything itself, on free ports, with a fresh PostgreSQL database and an emptied Redis
database: the project's mock Anthropic API (tests/mockapi.py, answering at once), the real CLI
(node_tools/), gunicorn with the production settings and ``manage.py rqworker-pool`` with
QUEUE_CONCURRENCY workers, as scripts/serve runs them. Then it measures:

1. the bare CLI: cold latency of sequential runs, and the throughput of ``xargs -P QUEUE_CONCURRENCY``;
2. end-to-end latency (POST, then GET until the result is visible) of sequential distinct queries:
   "at rest" waits for the warm pool to be ready again between queries (as the bare CLI runs one at
   a time on an idle machine), "back to back" does not;
3. a burst of distinct queries submitted at once, until all are answered (jobs/s), beside
   ``xargs -P``; the gateway's own CPU per job during it (web and worker processes, work horses
   included, the CLI and its MCP servers excluded) and the CLI's;
4. memory (RSS and PSS) per process at rest;
5. cache hits with wrk at 16 connections, beside a bare Django view (bench/bare_app.py) served by the
   same gunicorn settings, checking every request was recorded (one QueryRequest row each);
6. submissions that miss the cache with no worker running (only the submit path), with wrk.

It prints a table and writes it (Markdown, plus the raw figures as JSON) under bench/results/.
Figures depend on the machine and on what else runs: it prints the load average at the start and
the end, and each ratio compares figures taken minutes apart in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
import requests
from figures import percentile  # bench/, the script's own directory

REPO = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)
GUNICORN = PYTHON.with_name("gunicorn")
CLAUDE = REPO / "node_tools" / "node_modules" / ".bin" / "claude"
RESULTS = REPO / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FINISHED = ("completed", "failed", "cancelled")
PHASES = ("latency", "burst", "cache", "submit")


# --- small helpers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Proc:
    """One /proc/PID/stat reading: CPU in seconds (own, and of reaped children), parent, state."""

    pid: int
    ppid: int
    state: str
    cpu: float
    children_cpu: float

    @classmethod
    def read(cls, pid: int) -> Proc | None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2 :].split()
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        return cls(pid, int(fields[1]), fields[0], (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK)


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        for child in children(stack.pop()):
            found.append(child)
            stack.append(child)
    return found


def tree_cpu(pid: int) -> float | None:
    """CPU seconds of a process and everything under it (None if it is gone)."""
    readings = [Proc.read(p) for p in [pid, *descendants(pid)]]
    if readings[0] is None:
        return None
    return sum(r.cpu for r in readings if r is not None)


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB; PSS shares out pages that forked processes have in common."""
    rss = pss = 0
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


# --- the environment ---------------------------------------------------------------------------------


@dataclass
class Setup:
    args: argparse.Namespace
    tmp: Path
    database_url: str
    redis_url: str
    mock_url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    started: list[subprocess.Popen] = field(default_factory=list)

    def log(self, name: str):
        return open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child process

    def spawn(self, command: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=env or self.env,
            stdout=self.log(name),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 20) -> None:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [str(PYTHON), "manage.py", *args], cwd=REPO, env=self.env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout


def fresh_database(url: str) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise SystemExit(f"refusing to recreate database {name!r}: use letters, digits and _")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def start_mock(setup: Setup) -> None:
    port_file = setup.tmp / "mock.port"
    setup.spawn([str(PYTHON), "tests/mockapi.py", "--port", "0", "--port-file", str(port_file)], "mockapi")
    port = wait_until(lambda: port_file.exists() and port_file.read_text().strip(), 15, "the mock API")
    setup.mock_url = f"http://127.0.0.1:{port}"


def gateway_env(setup: Setup) -> dict[str, str]:
    args = setup.args
    home = setup.tmp / "home"
    home.mkdir(exist_ok=True)
    path = os.pathsep.join([str(CLAUDE.parent), str(PYTHON.parent), os.environ.get("PATH", "")])
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CLAUDE_", "WEB_", "GUNICORN_", "PROMETHEUS_", "DJANGO_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="gateway_project.settings",
        DATABASE_URL=setup.database_url,
        REDIS_URL=setup.redis_url,
        SECRET_KEY="bench-" + uuid.uuid4().hex,
        GATEWAY_VAR_DIR=str(setup.tmp / "var"),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        HOME=str(home),
        PATH=path,
        ANTHROPIC_BASE_URL=setup.mock_url,
        ANTHROPIC_API_KEY="sk-bench-mock",
        # The CLI under GNU time, which records each run's CPU (CpuAccount).
        CLAUDE_BIN=str(REPO / "bench" / "claude_timed"),
        BENCH_REAL_CLAUDE=str(CLAUDE),
        BENCH_CLI_TIMES=str(setup.tmp / "cli-times.txt"),
        CLAUDE_WORKDIR=str(setup.tmp / "workdir"),
        QUEUE_CONCURRENCY=str(args.concurrency),
        CLAUDE_POOL_SIZE=str(args.pool_size),
        WORKER_FORK="true" if args.worker_fork else "false",
        PYTHONUNBUFFERED="1",
    )
    if args.web_concurrency:
        env["WEB_CONCURRENCY"] = str(args.web_concurrency)
    if args.web_threads:
        env["WEB_THREADS"] = str(args.web_threads)
    return env


def cli_env(setup: Setup) -> dict[str, str]:
    """What the worker gives the CLI: the same HOME, mock, and nonessential traffic off."""
    return {**setup.env, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}


# --- the bare CLI --------------------------------------------------------------------------------------


def cli_argv(prompt: str) -> list[str]:
    return [str(CLAUDE), "--print", "--output-format", "json", "--strict-mcp-config", "--", prompt]


def bare_sequential(setup: Setup, n: int, run_id: str) -> dict[str, Any]:
    """n cold runs one after another: wall time each, and CPU and peak memory from wait4."""
    workdir = Path(setup.env["CLAUDE_WORKDIR"])
    times, cpus, rss = [], [], []
    for i in range(n):
        started = time.monotonic()
        proc = subprocess.Popen(
            cli_argv(f"bare {run_id} {i}: what is {i}+{i}?"),
            cwd=workdir,
            env=cli_env(setup),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        times.append(time.monotonic() - started)
        result = json.loads(out)
        if proc.returncode != 0 or result.get("is_error"):
            raise RuntimeError(f"the bare CLI failed: {out[:300]!r}")
        cpus.append(usage.ru_utime + usage.ru_stime)
        rss.append(usage.ru_maxrss)
    return {
        "n": n,
        "p50": percentile(times, 50),
        "p95": percentile(times, 95),
        "mean": statistics.fmean(times),
        "cpu_per_run": statistics.fmean(cpus),
        "max_rss_mib": max(rss) / 1024,
    }


def bare_parallel(setup: Setup, n: int, parallel: int, run_id: str) -> dict[str, Any]:
    """n cold runs through ``xargs -P parallel``: runs per second, and CPU per run under the same
    crowding as the gateway's burst (bench/claude_timed, whose own cost is a few milliseconds)."""
    workdir = Path(setup.env["CLAUDE_WORKDIR"])
    prompts = "".join(f"bare burst {run_id} {i}: name {i} primes\0" for i in range(n)).encode()
    argv = ["xargs", "-0", "-n", "1", "-P", str(parallel), setup.env["CLAUDE_BIN"], *cli_argv("")[1:-1]]
    times = setup.tmp / "bare-times.txt"
    env = {**cli_env(setup), "BENCH_CLI_TIMES": str(times)}
    started = time.monotonic()
    done = subprocess.run(argv, input=prompts, cwd=workdir, env=env, capture_output=True)
    elapsed = time.monotonic() - started
    cpu, runs, _ = CpuAccount.cli_seconds(times, 0)
    answers = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    if done.returncode != 0 or len(answers) != n or any(a.get("is_error") for a in answers):
        raise RuntimeError(f"xargs -P: {done.returncode}, {len(answers)} answers, {done.stderr[-300:]!r}")
    return {
        "n": n,
        "parallel": parallel,
        "seconds": elapsed,
        "per_second": n / elapsed,
        "cpu_per_run": cpu / runs,
    }


# --- the gateway -------------------------------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    web: subprocess.Popen
    workers: subprocess.Popen | None
    key: str

    def session(self) -> requests.Session:
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=256))
        session.headers["Authorization"] = f"Bearer {self.key}"
        return session


def start_web(setup: Setup, app: str, name: str, **extra_env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **setup.env,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(setup.tmp / f"prometheus-{port}"),
        **extra_env,
    }
    command = [str(GUNICORN), app, "--config", "gateway_project/gunicorn.conf.py"]
    if setup.args.web_worker_class:
        command += ["--worker-class", setup.args.web_worker_class]
    proc = setup.spawn(command, name, env)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {setup.tmp / name}.log")
        try:
            requests.get(f"{url}/health", timeout=5)
            return True
        except requests.RequestException:
            return False

    wait_until(up, 60, name)
    return proc, url


def start_workers(setup: Setup) -> subprocess.Popen:
    command = [str(PYTHON), "manage.py", "rqworker-pool", "high", "default", "low"]
    return setup.spawn(command + ["--num-workers", str(setup.args.concurrency)], "workers")


def worker_pids(pool_master: subprocess.Popen) -> list[int]:
    return children(pool_master.pid)


def warm_clis(workers: list[int]) -> list[int]:
    return [pid for w in workers for pid in children(w) if "--input-format" in cmdline(pid)]


def wait_pool_ready(setup: Setup, pool_master: subprocess.Popen, timeout: float = 30) -> float:
    """Wait until every worker has its warm CLIs and they have finished starting (next to no CPU
    used for 0.3 s); returns how long that took."""
    started = time.monotonic()
    expected = setup.args.concurrency * setup.args.pool_size
    if expected == 0:
        return 0.0

    def ready() -> bool:
        workers = worker_pids(pool_master)
        if len(workers) < setup.args.concurrency:
            return False
        clis = warm_clis(workers)
        if len(clis) < expected:
            return False
        if setup.args.smoke:
            return True  # the smoke run checks that every measurement works, not how fast
        before = {pid: tree_cpu(pid) for pid in clis}
        time.sleep(0.3)
        after = {pid: tree_cpu(pid) for pid in clis}
        # An idle CLI still wakes now and then (about 10 ms of CPU a second); a starting one is busy.
        return all(
            before[p] is not None and after[p] is not None and after[p] - before[p] < 0.03 for p in clis
        )

    wait_until(ready, timeout, "the warm CLI pool", interval=0.1)
    return time.monotonic() - started


def warm_up(gateway: Gateway) -> None:
    """Give every web process and thread its first requests (imports, connections) before timing."""

    def one(_: int) -> None:
        session = gateway.session()
        for _ in range(10):
            session.get(f"{gateway.url}/api/query/{uuid.uuid4()}", timeout=30)
            session.post(f"{gateway.url}/api/query", json={"query": ""}, timeout=30)

    with ThreadPoolExecutor(max_workers=16) as executor:
        list(executor.map(one, range(16)))


def post(session: requests.Session, url: str, query: str) -> dict[str, Any]:
    response = session.post(f"{url}/api/query", json={"query": query}, timeout=30)
    if response.status_code not in (200, 202):
        raise RuntimeError(f"POST /api/query: {response.status_code} {response.text[:300]}")
    return response.json()


def wait_result(
    session: requests.Session,
    url: str,
    job_id: str,
    interval: float,
    timeout: float = 120,
    db: psycopg.Connection | None = None,
) -> dict:
    """Wait for the job's result to be visible through the API.

    With ``db``, the job's row is watched (a cheap query) and the API asked once it is final: polling
    the API itself every few milliseconds would load the web server on the machine being measured.
    """
    deadline = time.monotonic() + timeout
    while True:
        final = True
        if db is not None:
            row = db.execute("SELECT state FROM queries_job WHERE id = %s", (job_id,)).fetchone()
            final = row is not None and row[0] in FINISHED
        if final:
            body = session.get(f"{url}/api/query/{job_id}", timeout=30).json()
            if body["state"] in FINISHED:
                if body["state"] != "completed":
                    raise RuntimeError(f"job {job_id} {body['state']}: {body.get('error')}")
                return body
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} not finished after {timeout} s")
        time.sleep(interval)


def gateway_latency(
    setup: Setup, gateway: Gateway, n: int, run_id: str, *, rest: bool, label: str
) -> dict[str, Any]:
    session = gateway.session()
    times = []
    with psycopg.connect(setup.database_url, autocommit=True) as db:
        for i in range(n):
            if rest and gateway.workers is not None:
                wait_pool_ready(setup, gateway.workers)
            started = time.monotonic()
            job = post(session, gateway.url, f"latency {label} {run_id} {i}: what is {i}+{i}?")
            wait_result(session, gateway.url, job["jobId"], interval=setup.args.poll_interval, db=db)
            times.append(time.monotonic() - started)
    return {
        "times": [round(t, 4) for t in times],
        "n": n,
        "p50": percentile(times, 50),
        "p95": percentile(times, 95),
        "mean": statistics.fmean(times),
    }


# --- CPU accounting during the burst --------------------------------------------------------------------


class CpuAccount:
    """The gateway's own CPU, apart from the CLI's, while jobs run.

    gunicorn and rq worker processes live through the measurement: their own CPU is read from /proc
    at its start and end. Work horses and CLIs come and go; a reaped process's CPU moves into its
    parent's "children" total, so a worker's grows by its work horses' CPU plus that of the CLIs it
    reaps (warm ones; a work horse reaps the CLI it started cold). The workers run the CLI under GNU
    time (bench/claude_timed), which records each CLI's CPU as it exits: the horses' CPU is what is
    left of the workers' children total once that is subtracted.
    """

    def __init__(self, web_root: int, worker_root: int, times_file: Path) -> None:
        self.web_root = web_root
        self.worker_root = worker_root
        self.times_file = times_file

    def long_lived(self) -> tuple[dict[int, Proc], dict[int, Proc]]:
        """(web processes, worker processes): gunicorn's, and the rq pool's with rq's scheduler."""
        web = [self.web_root, *children(self.web_root)]
        workers = [self.worker_root, *children(self.worker_root)]
        workers += [pid for w in children(self.worker_root) for pid in children(w) if self._scheduler(pid)]
        read = lambda pids: {pid: proc for pid in pids if (proc := Proc.read(pid)) is not None}  # noqa: E731
        return read(web), read(workers)

    @staticmethod
    def _scheduler(pid: int) -> bool:
        return cmdline(pid).startswith(str(PYTHON))

    @staticmethod
    def cli_seconds(times_file: Path, offset: int) -> tuple[float, int, int]:
        """(CPU seconds, runs) recorded after byte ``offset``, and the file's end."""
        try:
            data = times_file.read_bytes()
        except FileNotFoundError:
            return 0.0, 0, 0
        total, runs = 0.0, 0
        for line in data[offset:].decode().splitlines():
            if line.startswith("cli "):
                user, system = line.split()[1:3]
                # GNU time truncates each figure to 10 ms: add back the 5 ms it drops on average.
                total += float(user) + float(system) + 0.01
                runs += 1
        return total, runs, len(data)

    @contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        figures: dict[str, float] = {}
        web_before, workers_before = self.long_lived()
        _, _, offset = self.cli_seconds(self.times_file, 0)
        try:
            yield figures
        finally:
            time.sleep(0.5)  # the last horses exit and their CLIs are reaped
            web_after, workers_after = self.long_lived()
            web = [p for p in web_before if p in web_after]
            workers = [p for p in workers_before if p in workers_after]
            figures["web"] = sum(web_after[p].cpu - web_before[p].cpu for p in web)
            figures["worker_own"] = sum(workers_after[p].cpu - workers_before[p].cpu for p in workers)
            reaped = sum(workers_after[p].children_cpu - workers_before[p].children_cpu for p in workers)
            figures["cli"], figures["clis_reaped"], _ = self.cli_seconds(self.times_file, offset)
            figures["horses"] = reaped - figures["cli"]


def burst(setup: Setup, gateway: Gateway, n: int, run_id: str, account: CpuAccount) -> dict[str, Any]:
    session = gateway.session()
    queries = [f"burst {run_id} {i}: name {i} primes" for i in range(n)]
    with account.measure() as cpu:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=min(n, 32)) as executor:
            jobs = list(executor.map(lambda q: post(session, gateway.url, q)["jobId"], queries))
        with psycopg.connect(setup.database_url, autocommit=True) as conn:

            def count() -> int:
                row = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE state = 'completed') FROM queries_job"
                    " WHERE id = ANY(%s::uuid[]) AND state = ANY(%s)",
                    (jobs, list(FINISHED)),
                ).fetchone()
                return row

            finished = wait_until(lambda: (c := count())[0] == n and c, 300, "the burst", interval=0.02)
        elapsed = time.monotonic() - started
    if finished[1] != n:
        raise RuntimeError(f"burst: {n - finished[1]} of {n} jobs did not complete")
    per_job = {k: v / n for k, v in cpu.items() if k in ("web", "worker_own", "horses", "cli")}
    return {
        "n": n,
        "seconds": elapsed,
        "per_second": n / elapsed,
        "cpu_per_job": per_job,
        "clis_reaped": cpu["clis_reaped"],
    }


def pool_counts(setup: Setup) -> dict[str, Any]:
    """Warm-pool hits and misses so far (the gateway's own counters), and the jobs' intents: a query
    routed to an MCP server needs a CLI with that server, which no worker has warm at first."""
    counters = redis.Redis.from_url(setup.redis_url).hgetall("metrics:counters")
    with psycopg.connect(setup.database_url, autocommit=True) as conn:
        intents = dict(conn.execute("SELECT intent, count(*) FROM queries_job GROUP BY intent").fetchall())
    return {
        "hits": int(float(counters.get(b"claude_cli_pool_hits_total", 0))),
        "misses": int(float(counters.get(b"claude_cli_pool_misses_total", 0))),
        "intents": intents,
    }


def memory(setup: Setup, gateway: Gateway) -> dict[str, Any]:
    def describe(pids: list[int]) -> dict[str, Any]:
        readings = [memory_kib(pid) for pid in pids]
        return {
            "count": len(pids),
            "rss_mib_each": statistics.fmean(r[0] for r in readings) / 1024 if readings else 0,
            "pss_mib_total": sum(r[1] for r in readings) / 1024,
        }

    workers = worker_pids(gateway.workers) if gateway.workers else []
    clis = warm_clis(workers)
    trees = [[cli, *descendants(cli)] for cli in clis]
    per_cli = [[memory_kib(p) for p in tree] for tree in trees]
    return {
        "web_master": describe([gateway.web.pid]),
        "web_workers": describe(children(gateway.web.pid)),
        "worker_pool_master": describe([gateway.workers.pid]) if gateway.workers else describe([]),
        "workers": describe(workers),
        # Each warm CLI with what it started (and GNU time, bench/claude_timed: about 2 MB).
        "warm_clis": {
            "count": len(trees),
            "rss_mib_each": statistics.fmean(sum(m[0] for m in tree) for tree in per_cli) / 1024
            if trees
            else 0,
            "pss_mib_total": sum(m[1] for tree in per_cli for m in tree) / 1024,
        },
    }


# --- wrk --------------------------------------------------------------------------------------------

WRK_SAME = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""

WRK_DISTINCT = """
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function request()
  counter = counter + 1
  local body = '{{"query": "submit {run_id} ' .. tid .. ' ' .. counter .. ': what is new?"}}'
  return wrk.format("POST", "/api/query", {{["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer {key}"}}, body)
end
"""


def wrk(setup: Setup, url: str, script: str, name: str, duration: float | None = None) -> dict[str, Any]:
    path = setup.tmp / f"{name}.lua"
    path.write_text(script)
    args = setup.args
    command = [
        "wrk",
        f"-t{args.wrk_threads}",
        f"-c{args.wrk_connections}",
        f"-d{duration or args.wrk_duration}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(path),
        f"{url}/api/query",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    (setup.tmp / f"{name}.wrk.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr}")
    return parse_wrk(done.stdout)


def wrk_warm_up(setup: Setup, url: str, script: str, name: str) -> None:
    """A short wrk run first: gunicorn answers /health once one worker is up, and wrk's connections,
    kept alive for the whole run, would all land on the workers that had finished starting."""
    wrk(setup, url, script, f"{name}-warm-up", duration=min(2, setup.args.wrk_duration))


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    figures: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    for line in output.splitlines():
        line = line.strip()
        if m := re.match(r"(\d+) requests in ([\d.]+)(\w+)", line):
            figures["requests"] = int(m.group(1))
        elif m := re.match(r"Requests/sec:\s+([\d.]+)", line):
            figures["per_second"] = float(m.group(1))
        elif m := re.match(r"(50|75|90|99)%\s+(\S+)", line):
            figures[f"p{m.group(1)}_ms"] = _ms(m.group(2))
        elif m := re.match(r"Non-2xx or 3xx responses: (\d+)", line):
            figures["non_2xx"] = int(m.group(1))
        elif line.startswith("Socket errors:"):
            figures["socket_errors"] = sum(int(n) for n in re.findall(r"\d+", line))
    return figures


def count_rows(setup: Setup, sql: str) -> int:
    with psycopg.connect(setup.database_url, autocommit=True) as conn:
        return conn.execute(sql).fetchone()[0]


def cache_hits(setup: Setup, gateway: Gateway, run_id: str) -> tuple[dict, dict]:
    """wrk against the gateway's cache hit, then against the bare view reading the same Redis key."""
    session = gateway.session()
    query = f"cache {run_id}: what is 2+2?"
    job = post(session, gateway.url, query)
    wait_result(session, gateway.url, job["jobId"], interval=0.02)
    again = post(session, gateway.url, query)
    if not again.get("cached"):
        raise RuntimeError(f"the second submission was not a cache hit: {again}")
    with psycopg.connect(setup.database_url, autocommit=True) as conn:
        digest = conn.execute("SELECT hash FROM queries_job WHERE id = %s", (job["jobId"],)).fetchone()[0]
    cache_key = f"claude:{digest}"
    body = json.dumps(json.dumps({"query": query}))
    script = WRK_SAME.format(body=body, key=gateway.key)
    recorded = "SELECT count(*) FROM queries_queryrequest WHERE outcome = 'cached'"
    # Hits are journaled in Redis and written by the web processes' recorders a moment later.
    journal = redis.Redis.from_url(setup.redis_url)
    wrk_warm_up(setup, gateway.url, script, "cache-gateway")
    wait_until(lambda: journal.xlen("journal:requests") == 0, 60, "the request journal to drain")
    before = count_rows(setup, recorded)
    ours = wrk(setup, gateway.url, script, "cache-gateway")
    started = time.monotonic()
    wait_until(lambda: journal.xlen("journal:requests") == 0, 60, "the request journal to drain")
    ours["journal_drain_s"] = time.monotonic() - started
    ours["recorded"] = count_rows(setup, recorded) - before

    bare_proc, bare_url = start_web(
        setup, "bench.bare_app:application", "bare-django", BENCH_CACHE_KEY=cache_key
    )
    try:
        check = requests.post(f"{bare_url}/api/query", data=json.loads(body), timeout=5)
        if check.status_code != 200 or json.loads(check.content)["jobId"] != job["jobId"]:
            raise RuntimeError(f"the bare view does not answer the cached entry: {check.status_code}")
        wrk_warm_up(setup, bare_url, script, "cache-bare")
        bare = wrk(setup, bare_url, script, "cache-bare")
    finally:
        setup.stop(bare_proc)
    return ours, bare


def submissions(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    """wrk posting distinct queries with no worker running: the submit path alone."""
    jobs = "SELECT count(*) FROM queries_job"
    before = count_rows(setup, jobs)
    figures = wrk(setup, gateway.url, WRK_DISTINCT.format(run_id=run_id, key=gateway.key), "submit")
    figures["jobs_created"] = count_rows(setup, jobs) - before
    return figures


# --- the report ----------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    version = subprocess.run([str(CLAUDE), "--version"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "claude": version,
        "commit": commit.stdout.strip() or "?",
    }


def fmt(value: float, unit: str = "") -> str:
    if value != value:  # NaN
        return "n/a"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "/s":
        return f"{value:,.1f}/s"
    return f"{value:.2f}{unit}"


def report(results: dict[str, Any]) -> str:
    r = results
    rows: list[tuple[str, str, str, str, str]] = []

    def row(what: str, ours: str, reference: str = "", ratio: str = "", target: str = "") -> None:
        rows.append((what, ours, reference, ratio, target))

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    bare = r.get("bare_sequential")
    if "latency_rest" in r:
        rest, b2b = r["latency_rest"], r["latency_back_to_back"]
        ratio = rest["p50"] / bare["p50"]
        row(
            f"End-to-end latency p50, sequential at rest ({rest['n']} queries)",
            fmt(rest["p50"], "s"),
            f"bare CLI cold p50 {fmt(bare['p50'], 's')} ({bare['n']} runs)",
            f"{ratio:.2f}×",
            f"≤ 0.5× {verdict(ratio <= 0.5)}",
        )
        row(
            "End-to-end latency p95, sequential at rest",
            fmt(rest["p95"], "s"),
            f"bare CLI cold p95 {fmt(bare['p95'], 's')}",
            f"{rest['p95'] / bare['p95']:.2f}×",
        )
        row(
            f"End-to-end latency p50 / p95, back to back ({b2b['n']} queries)",
            f"{fmt(b2b['p50'], 's')} / {fmt(b2b['p95'], 's')}",
            f"bare CLI cold p50 {fmt(bare['p50'], 's')}",
            f"{b2b['p50'] / bare['p50']:.2f}×",
        )
    if "burst" in r:
        par = r["bare_parallel"]
        burst_ratio = r["burst"]["per_second"] / par["per_second"]
        row(
            f"Burst of {r['burst']['n']} distinct queries, QUEUE_CONCURRENCY={r['config']['concurrency']}",
            fmt(r["burst"]["per_second"], "/s"),
            f"bare CLI, xargs -P{par['parallel']}: {fmt(par['per_second'], '/s')}",
            f"{burst_ratio:.2f}×",
            f"≥ 0.95× {verdict(burst_ratio >= 0.95)}",
        )
    if "cache_gateway" in r:
        ours, ref = r["cache_gateway"], r["cache_bare"]
        hit_ratio = ours["per_second"] / ref["per_second"]
        # Requests still in flight when wrk stops are answered and recorded, but not counted by wrk.
        every = (
            ours["requests"] <= ours["recorded"] <= ours["requests"] + r["config"]["wrk_connections"]
            and ours["non_2xx"] == 0
            and ours["socket_errors"] == 0
        )
        row(
            f"Cache hits, wrk {r['config']['wrk_connections']} connections",
            fmt(ours["per_second"], "/s"),
            f"bare Django view: {fmt(ref['per_second'], '/s')}",
            f"{hit_ratio:.2f}×",
            f"≥ 0.5× {verdict(hit_ratio >= 0.5)}",
        )
        row(
            "Cache-hit latency p50 / p99",
            f"{fmt(ours['p50_ms'], 'ms')} / {fmt(ours['p99_ms'], 'ms')}",
            f"bare: {fmt(ref['p50_ms'], 'ms')} / {fmt(ref['p99_ms'], 'ms')}",
            "",
            f"p99 < 15 ms {verdict(ours['p99_ms'] < 15)}",
        )
        row(
            "Cache hits recorded (QueryRequest rows / answers)",
            f"{ours['recorded']:,} / {ours['requests']:,}",
            f"non-2xx {ours['non_2xx']}, socket errors {ours['socket_errors']}",
            "",
            f"every request {verdict(every)}",
        )
    if "submissions" in r:
        sub = r["submissions"]
        row(
            "Submissions missing the cache, no worker (wrk)",
            fmt(sub["per_second"], "/s"),
            f"p50 {fmt(sub['p50_ms'], 'ms')}, p99 {fmt(sub['p99_ms'], 'ms')}",
            "",
            f"jobs {sub['jobs_created']:,} / answers {sub['requests']:,}, non-2xx {sub['non_2xx']}",
        )
    if "burst" in r:
        cpu = r["burst"]["cpu_per_job"]
        gateway_cpu = cpu["web"] + cpu["worker_own"] + cpu["horses"]
        row(
            "Gateway CPU per job in the burst (web + rq worker + work horse)",
            f"{gateway_cpu * 1000:.1f} ms",
            f"web {cpu['web'] * 1000:.1f} + worker {cpu['worker_own'] * 1000:.1f}"
            f" + horse {cpu['horses'] * 1000:.1f} ms",
            f"{gateway_cpu / par['cpu_per_run']:.3f}× a bare run's CPU",
        )
        row(
            "CLI CPU per job in the burst",
            f"{cpu['cli'] * 1000:.0f} ms",
            f"bare CLI under xargs -P{par['parallel']}: {par['cpu_per_run'] * 1000:.0f} ms per run",
            f"{cpu['cli'] / par['cpu_per_run']:.2f}×",
        )
    if "pool" in r:
        pool = r["pool"]
        row(
            "Warm pool: jobs that took a warm CLI / started cold",
            f"{pool['hits']} / {pool['misses']}",
            "jobs by intent: " + ", ".join(f"{k} {v}" for k, v in sorted(pool["intents"].items())),
        )
    mem = r["memory"]
    for name, label in (
        ("web_workers", "gunicorn worker"),
        ("workers", "rq worker"),
        ("warm_clis", "warm CLI, with its children"),
    ):
        m = mem[name]
        if m["count"]:
            row(
                f"Memory per {label} (×{m['count']})",
                f"RSS {m['rss_mib_each']:.0f} MiB",
                f"PSS {m['pss_mib_total'] / m['count']:.0f} MiB",
            )
    if bare:
        row("Bare CLI peak RSS per run", f"{bare['max_rss_mib']:.0f} MiB")

    header = ("Measurement", "Gateway", "Reference (same run)", "Ratio", "Target")
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(5)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) + " |" for x in rows]

    m, c = r["machine"], r["config"]
    intro = [
        f"# Gateway benchmark, {r['finished_at']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, Linux {m['kernel']}, Python {m['python']},"
        f" {m['claude']}; commit {m['commit']}.",
        f"Load average at start {r['load_start']}, at end {r['load_end']}.",
        f"Config: QUEUE_CONCURRENCY={c['concurrency']}, CLAUDE_POOL_SIZE={c['pool_size']},"
        f" jobs {'in forked work horses' if c.get('worker_fork') else 'in the worker processes'},"
        f" WEB_CONCURRENCY={c['web_concurrency'] or 'default'}, WEB_THREADS={c['web_threads'] or 'default'},"
        f" worker class {c['web_worker_class'] or 'gunicorn.conf.py'}; wrk -t{c['wrk_threads']}"
        f" -c{c['wrk_connections']} -d{c['wrk_duration']}s;"
        f" job rows polled every {c['poll_interval'] * 1000:g} ms, then the result read through the API.",
        "",
    ]
    return "\n".join(intro + lines) + "\n"


# --- main -------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, to check that it all works")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("QUEUE_CONCURRENCY", 5)))
    parser.add_argument("--pool-size", type=int, default=int(os.environ.get("CLAUDE_POOL_SIZE", 1)))
    parser.add_argument("--latency-n", type=int, default=20, help="sequential queries (each kind)")
    parser.add_argument("--bare-n", type=int, default=10, help="sequential bare CLI runs")
    parser.add_argument("--burst-n", type=int, default=30, help="queries in the burst, and xargs runs")
    parser.add_argument("--wrk-duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--wrk-connections", type=int, default=16)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--poll-interval", type=float, default=0.005, help="seconds between result polls")
    parser.add_argument("--web-concurrency", type=int, help="WEB_CONCURRENCY (default: gunicorn.conf.py's)")
    parser.add_argument("--web-threads", type=int, help="WEB_THREADS (default: gunicorn.conf.py's)")
    parser.add_argument("--web-worker-class", help="gunicorn --worker-class instead of gunicorn.conf.py's")
    parser.add_argument("--worker-fork", action="store_true", help="WORKER_FORK=true: a work horse per job")
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
        "--only",
        nargs="+",
        choices=PHASES,
        default=list(PHASES),
        help="run only these measurements (the bare CLI runs with latency and burst)",
    )
    parser.add_argument(
        "--out", type=Path, help="the Markdown report (default bench/results/bench-<time>.md)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.latency_n, args.bare_n, args.burst_n, args.wrk_duration = 2, 2, 3, 1
        args.concurrency = min(args.concurrency, 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    if not Path("/usr/bin/time").exists():
        raise SystemExit("GNU time is not installed at /usr/bin/time (Debian: apt-get install time)")
    if not CLAUDE.exists():
        raise SystemExit(f"the Claude CLI is not installed at {CLAUDE} (scripts/bootstrap)")
    run_id = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    setup = Setup(args=args, tmp=tmp, database_url=args.database_url, redis_url=args.redis_url)
    results: dict[str, Any] = {
        "machine": machine(),
        "load_start": loadavg(),
        "config": {
            k: getattr(args, k)
            for k in (
                "concurrency",
                "pool_size",
                "web_concurrency",
                "web_threads",
                "web_worker_class",
                "worker_fork",
                "wrk_connections",
                "wrk_threads",
                "wrk_duration",
                "poll_interval",
            )
        },
    }

    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} load {loadavg()}] {text}", flush=True)

    say(f"machine: {results['machine']}; logs in {tmp}")
    try:
        fresh_database(args.database_url)
        redis.Redis.from_url(args.redis_url).flushdb()
        start_mock(setup)
        setup.env = gateway_env(setup)
        Path(setup.env["CLAUDE_WORKDIR"]).mkdir(parents=True)
        say("migrating a fresh database")
        setup.manage("migrate", "--noinput")
        key = setup.manage("create_api_key", "bench").strip().splitlines()[-1]

        phases = set(args.only)
        if "latency" in phases:
            say(f"bare CLI: {args.bare_n} sequential runs")
            results["bare_sequential"] = bare_sequential(setup, args.bare_n, run_id)
        if "burst" in phases:
            say(f"bare CLI: {args.burst_n} runs through xargs -P{args.concurrency}")
            results["bare_parallel"] = bare_parallel(setup, args.burst_n, args.concurrency, run_id)

        say("starting gunicorn and the rq worker pool")
        web, url = start_web(setup, "gateway_project.wsgi", "web")
        workers = start_workers(setup)
        gateway = Gateway(url=url, web=web, workers=workers, key=key)
        warm_up(gateway)
        say(f"warm pool ready after {wait_pool_ready(setup, workers, timeout=90):.1f} s")

        if "latency" in phases:
            say(f"latency: {args.latency_n} sequential queries at rest")
            results["latency_rest"] = gateway_latency(
                setup, gateway, args.latency_n, run_id, rest=True, label="quiet"
            )
            say(f"latency: {args.latency_n} sequential queries back to back")
            wait_pool_ready(setup, workers)
            results["latency_back_to_back"] = gateway_latency(
                setup, gateway, args.latency_n, run_id, rest=False, label="busy"
            )
        if "burst" in phases:
            wait_pool_ready(setup, workers, timeout=90)
            say(f"burst: {args.burst_n} distinct queries at once")
            account = CpuAccount(web.pid, workers.pid, Path(setup.env["BENCH_CLI_TIMES"]))
            results["burst"] = burst(setup, gateway, args.burst_n, run_id, account)
            wait_pool_ready(setup, workers, timeout=90)
        results["memory"] = memory(setup, gateway)
        results["pool"] = pool_counts(setup)

        if "cache" in phases:
            say(f"cache hits: wrk {args.wrk_duration} s against the gateway, then against a bare Django view")
            results["cache_gateway"], results["cache_bare"] = cache_hits(setup, gateway, run_id)

        if "submit" in phases:
            say("submissions with the workers stopped")
            setup.stop(workers)
            gateway.workers = None
            results["submissions"] = submissions(setup, gateway, run_id)
    finally:
        setup.stop_all()
    results["load_end"] = loadavg()
    results["finished_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    text = report(results)
    print()
    print(text)
    out = args.out or RESULTS / f"bench-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    print(f"written to {out} (raw figures: {out.with_suffix('.json')}); logs in {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
