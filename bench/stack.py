"""What the benchmark runs: a fresh database and Redis, the mock Anthropic API, gunicorn and the rq
workers with their warm CLIs, as scripts/serve runs them; and the client calls to the gateway.

The workers run one of two ways (``--workers``, :data:`WORKER_MODES`): ``pool``, one
``manage.py rqworker-pool --num-workers N`` whose master forks the N workers; or ``separate``, N
``manage.py rqworker high default low --with-scheduler`` processes started side by side."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
import requests
from procs import children, cmdline, free_port, say, tree_cpu, wait_until

REPO = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)
GUNICORN = PYTHON.with_name("gunicorn")
CLAUDE = REPO / "node_tools" / "node_modules" / ".bin" / "claude"
FINISHED = ("completed", "failed", "cancelled")
WORKER_MODES = ("pool", "separate")


@dataclass
class Setup:
    args: argparse.Namespace
    tmp: Path
    database_url: str
    redis_url: str
    mock_url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    started: list[subprocess.Popen] = field(default_factory=list)
    redis: subprocess.Popen | None = None  # the benchmark's own redis-server (--own-redis)

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

    def stop(self, proc: subprocess.Popen | Workers, timeout: float = 20) -> None:
        if isinstance(proc, Workers):
            # Signalled together, so that their stops' graces overlap.
            for one in proc.processes:
                if one.poll() is None:
                    with suppress(ProcessLookupError):
                        os.killpg(one.pid, signal.SIGTERM)
            for one in proc.processes:
                self.stop(one, timeout)
            return
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


def prepare(setup: Setup) -> str:
    """A fresh database and Redis, the mock API and a migrated schema; returns an API key."""
    fresh_database(setup.database_url)
    redis.Redis.from_url(setup.redis_url).flushdb()
    start_mock(setup)
    setup.env = gateway_env(setup)
    Path(setup.env["CLAUDE_WORKDIR"]).mkdir(parents=True)
    say("migrating a fresh database")
    setup.manage("migrate", "--noinput")
    return setup.manage("create_api_key", "bench").strip().splitlines()[-1]


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
    # Usage as the real prompt cache reports it, so a conversation's turns show what they reuse.
    command = [str(PYTHON), "tests/mockapi.py", "--port", "0", "--port-file", str(port_file)]
    # Each request's arrival time, for the latency breakdown (bench/waiting.py).
    command += ["--request-log", str(mock_request_log(setup))]
    setup.spawn([*command, "--prompt-cache"], "mockapi")
    port = wait_until(lambda: port_file.exists() and port_file.read_text().strip(), 15, "the mock API")
    setup.mock_url = f"http://127.0.0.1:{port}"


def mock_request_log(setup: Setup) -> Path:
    return setup.tmp / "mock-requests.jsonl"


# --- a Redis server of the benchmark's own (--own-redis), which it may restart -------------------------


def start_own_redis(setup: Setup, port: int | None = None) -> subprocess.Popen:
    """A redis-server on a free port (or ``port``), without persistence: what it holds dies with it.
    Points ``setup.redis_url`` (and the gateway's REDIS_URL, once set) at it."""
    port = port or free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = setup.spawn(command, "redis")
    client = redis.Redis(port=port, socket_connect_timeout=0.5)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}; see {setup.tmp / 'redis'}.log")
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_until(up, 15, "the benchmark's redis-server")
    setup.redis_url = f"redis://127.0.0.1:{port}/0"
    if setup.env:
        setup.env["REDIS_URL"] = setup.redis_url
    setup.redis = proc
    return proc


def restart_own_redis(setup: Setup, down_for: float = 1.0) -> None:
    """Stop the benchmark's redis-server and start an empty one on the same port ``down_for`` s later."""
    proc = setup.redis
    if proc is None:
        raise RuntimeError("the benchmark runs no Redis of its own (--own-redis)")
    port = urlsplit(setup.redis_url).port
    setup.stop(proc)
    index = setup.started.index(proc)
    setup.started.remove(proc)
    time.sleep(down_for)
    new = start_own_redis(setup, port)
    # Stopped after the gateway at the end, as the first one would have been.
    setup.started.remove(new)
    setup.started.insert(index, new)


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
        # The CLI under GNU time, which records each run's CPU (procs.cli_seconds).
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


# --- the gateway -------------------------------------------------------------------------------------


@dataclass
class Workers:
    """The rq workers as started: one ``rqworker-pool`` master (``pool``) or N ``rqworker`` processes
    (``separate``)."""

    mode: str
    processes: list[subprocess.Popen]

    @property
    def masters(self) -> list[int]:
        """The processes that run no job: the pool's master (none when the workers run separately)."""
        return [self.processes[0].pid] if self.mode == "pool" else []

    def worker_pids(self) -> list[int]:
        if self.mode == "pool":
            return children(self.processes[0].pid)
        return [p.pid for p in self.processes if p.poll() is None]


@dataclass
class Gateway:
    url: str
    web: subprocess.Popen
    workers: Workers | None
    key: str

    def session(self) -> requests.Session:
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=256))
        session.headers["Authorization"] = f"Bearer {self.key}"
        return session


def start_gateway(setup: Setup, key: str) -> Gateway:
    """gunicorn and the rq workers (``--workers``), warmed up, with the warm CLI pool ready."""
    say(f"starting gunicorn and the rq workers ({setup.args.workers})")
    web, url = start_web(setup, "gateway_project.asgi:application", "web")
    workers = start_workers(setup, setup.args.workers)
    gateway = Gateway(url=url, web=web, workers=workers, key=key)
    warm_up(gateway)
    say(f"warm pool ready after {wait_pool_ready(setup, workers, timeout=90):.1f} s")
    return gateway


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


def start_workers(setup: Setup, mode: str) -> Workers:
    """QUEUE_CONCURRENCY rq workers, run ``mode``'s way (:data:`WORKER_MODES`)."""
    n = setup.args.concurrency
    if mode == "pool":
        command = [str(PYTHON), "manage.py", "rqworker-pool", "high", "default", "low"]
        return Workers(mode, [setup.spawn([*command, "--num-workers", str(n)], "workers")])
    if mode != "separate":
        raise ValueError(f"unknown worker mode {mode!r}")
    command = [str(PYTHON), "manage.py", "rqworker", "high", "default", "low", "--with-scheduler"]
    return Workers(mode, [setup.spawn(command, f"worker-{i}") for i in range(n)])


def worker_pids(workers: Workers) -> list[int]:
    return workers.worker_pids()


def warm_clis(workers: list[int]) -> list[int]:
    return [pid for w in workers for pid in children(w) if "--input-format" in cmdline(pid)]


def wait_pool_ready(setup: Setup, workers: Workers, timeout: float = 30) -> float:
    """Wait until every worker has its warm CLIs and they have finished starting (next to no CPU
    used for 0.3 s); returns how long that took."""
    started = time.monotonic()
    expected = setup.args.concurrency * setup.args.pool_size
    if expected == 0:
        return 0.0

    def ready() -> bool:
        pids = worker_pids(workers)
        if len(pids) < setup.args.concurrency:
            return False
        clis = warm_clis(pids)
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


# --- the client --------------------------------------------------------------------------------------


def post(session: requests.Session, url: str, query: str) -> dict[str, Any]:
    response = session.post(f"{url}/api/query", json={"query": query}, timeout=30)
    if response.status_code not in (200, 202):
        raise RuntimeError(f"POST /api/query: {response.status_code} {response.text[:300]}")
    return response.json()


def wait_final(session: requests.Session, url: str, job_id: str, timeout: float = 120) -> dict:
    """Wait for the job's final state as a well-behaved client does: ``GET /api/query/{id}?wait=S``
    answers as soon as the job is final (the web server waits for its final event), so there is no
    polling loop loading the web server on the machine being measured. Returns the body, any state."""
    deadline = time.monotonic() + timeout
    while True:
        wait = max(1, min(30, int(deadline - time.monotonic())))
        body = session.get(f"{url}/api/query/{job_id}", params={"wait": wait}, timeout=wait + 30).json()
        if body["state"] in FINISHED:
            return body
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} not finished after {timeout} s")


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


def count_rows(setup: Setup, sql: str) -> int:
    with psycopg.connect(setup.database_url, autocommit=True) as conn:
        return conn.execute(sql).fetchone()[0]
