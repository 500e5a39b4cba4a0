"""How long a /metrics scrape takes after many jobs and many worker restarts.

Runs gunicorn (2 workers) and, one after another, RESTARTS real `manage.py rqworker --burst`
processes that share JOBS queued jobs. Each job runs in its own forked work horse, as in production,
and makes the metric updates of one job's life (cache miss, CLI start, CLI run with duration, cost and
tokens, final state, dedup join and cache hit for some, a webhook delivery). Between worker runs a
gunicorn worker is restarted too, with requests in between, so the web's multiprocess files see
dead processes. Then it checks the totals are exact and times SCRAPES scrapes, each on a new
connection. For comparison it also times reading the files that per-process counters would have left
(one set per work horse).

    .venv/bin/python bench/metrics_scrape.py [--jobs 1000] [--restarts 20] [--scrapes 200]

It needs Redis and uses REDIS_URL (default redis://127.0.0.1:6379/9), which must be an empty
database unless --flush is given; the database is a throwaway SQLite file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def simulated_job(index: int) -> None:
    """The metric updates of one job, made in the rq work horse running it."""
    from core import metrics

    failed = index % 10 == 0
    job = SimpleNamespace(
        id=f"bench-{index}",
        state="failed" if failed else "completed",
        error_type="cli_error" if failed else "",
        cost_usd=Decimal("0.001250"),
        input_tokens=12,
        output_tokens=3,
        cache_read_input_tokens=0,
        cache_creation_input_tokens=100,
    )
    metrics.cache_miss_counted()
    metrics.cli_started(job_id=job.id, expected_end=time.time() + 300)
    metrics.cli_run_observed(job=job, outcome=SimpleNamespace(pid=os.getpid(), duration=0.5 + index % 60))
    metrics.job_finished_counted(job=job)
    if index % 3 == 0:
        metrics.request_counted(request=SimpleNamespace(outcome="deduplicated"))
    if index % 4 == 0:
        metrics.request_counted(request=SimpleNamespace(outcome="cached"))
    metrics.webhook_delivery_counted("delivered" if index % 7 else "failed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def wait_until(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return f"p50 {statistics.median(ordered):.1f} ms, p95 {p95:.1f} ms, max {ordered[-1]:.1f} ms"


def scrape_samples(url: str) -> dict[tuple[str, tuple], float]:
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def per_process_files_comparison(processes: int) -> tuple[int, list[float]]:
    """Scrape cost if every work horse had kept prometheus_client multiprocess files of its own."""
    from core.metrics import DURATION_BUCKETS

    directory = Path(tempfile.mkdtemp(prefix="bench-horse-files-"))
    writer = (
        "import os,sys\n"
        "from prometheus_client import Counter, Histogram\n"
        "c = Counter('claude_jobs_completed', 'x'); f = Counter('claude_jobs_failed', 'x', ['reason'])\n"
        "h = Histogram('claude_execution_duration_seconds', 'x', buckets=" + repr(DURATION_BUCKETS) + ")\n"
        "t = Counter('claude_tokens', 'x', ['type']); k = Counter('claude_cost_usd', 'x')\n"
        "n = int(sys.argv[1])\n"
        "for _ in range(n):\n"
        "    if os.fork() == 0:\n"
        "        c.inc(); f.labels('cli_error').inc(0); h.observe(3)\n"
        "        t.labels('input').inc(12); k.inc(0.001)\n"
        "        os._exit(0)\n"
        "    os.wait()\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", writer, str(processes)], env=env, check=True)
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    timings = []
    for _ in range(20):
        started = time.perf_counter()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        generate_latest(registry)
        timings.append((time.perf_counter() - started) * 1000)
    files = len(list(directory.glob("*.db")))
    for file in directory.glob("*.db"):
        file.unlink()
    directory.rmdir()
    return files, timings


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--flush", action="store_true", help="empty the Redis database first")
    args = parser.parse_args()

    import redis
    import requests

    redis_url = os.environ.get("BENCH_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/9"
    store = redis.Redis.from_url(redis_url)
    if store.dbsize() and not args.flush:
        print(f"{redis_url} is not empty; use an empty database or pass --flush", file=sys.stderr)
        return 2
    store.flushdb()

    work = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    print(f"logs in {work}")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
        "REDIS_URL": redis_url,
        "GATEWAY_VAR_DIR": str(work),
        "SECRET_KEY": "bench-only",
        "CLAUDE_WORKDIR": str(work / "workdir"),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }
    python = sys.executable
    subprocess.run(
        [python, "manage.py", "migrate", "--noinput"],
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    metrics_dir = work / "prometheus"
    web_env = {
        **env,
        "LOG_LEVEL": "INFO",  # the access lines carry each request's duration
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    web_log = open(work / "web.log", "wb")  # noqa: SIM115
    web = subprocess.Popen(
        [
            str(Path(python).with_name("gunicorn")),
            "gateway_project.wsgi",
            "--config",
            "gateway_project/gunicorn.conf.py",
        ],
        cwd=REPO,
        env=web_env,
        stdout=web_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(serving, 30, "gunicorn")
        import django

        os.environ.update(
            {
                k: env[k]
                for k in (
                    "DJANGO_SETTINGS_MODULE",
                    "DATABASE_URL",
                    "REDIS_URL",
                    "GATEWAY_VAR_DIR",
                    "SECRET_KEY",
                    "CLAUDE_WORKDIR",
                )
            }
        )
        django.setup()
        import django_rq

        queues = [django_rq.get_queue(name) for name in ("high", "default", "low")]
        for index in range(args.jobs):
            queues[index % 3].enqueue("bench.metrics_scrape.simulated_job", index, result_ttl=0)

        per_run = -(-args.jobs // args.restarts)
        worker_log = open(work / "workers.log", "wb")  # noqa: SIM115
        started = time.perf_counter()
        for run in range(args.restarts):
            subprocess.run(
                [
                    python,
                    "manage.py",
                    "rqworker",
                    "high",
                    "default",
                    "low",
                    "--burst",
                    "--max-jobs",
                    str(per_run),
                    "--name",
                    f"bench-{run}",
                ],
                cwd=REPO,
                env=env,
                check=True,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
            )
            # And a web worker dies and is replaced, after serving some requests.
            for _ in range(5):
                requests.get(f"{url}/health", timeout=5)
            victim = children(web.pid)[0]
            os.kill(victim, signal.SIGTERM)
            wait_until(
                lambda v=victim: v not in children(web.pid) and len(children(web.pid)) == 2,
                30,
                "a replacement gunicorn worker",
            )
        wait_until(serving, 30, "gunicorn after restarts")
        elapsed = time.perf_counter() - started
        print(
            f"ran {args.jobs} jobs in {args.restarts} rq worker processes (one work horse per job) "
            f"and restarted a gunicorn worker {args.restarts} times in {elapsed:.1f} s"
        )

        samples = scrape_samples(url)
        failed = sum(1 for i in range(args.jobs) if i % 10 == 0)
        expected = {
            ("claude_jobs_completed_total", ()): args.jobs - failed,
            ("claude_jobs_failed_total", (("reason", "cli_error"),)): failed,
            ("claude_cache_misses_total", ()): args.jobs,
            ("claude_execution_duration_seconds_count", ()): args.jobs,
            ("claude_cli_processes_running", ()): 0,
        }
        actual = {key: samples.get(key) for key in expected}
        print(
            "totals exact:",
            actual == expected,
            {k[0] + dict(k[1]).get("reason", ""): v for k, v in actual.items()},
        )
        health = samples.get(
            (
                "django_http_requests_total_by_view_transport_method_total",
                (("method", "GET"), ("transport", "http"), ("view", "health")),
            )
        )
        print(f"web requests to /health counted across {args.restarts} gunicorn restarts: {health:.0f}")

        log_lines_before = len((work / "web.log").read_text().splitlines())
        timings = []
        for _ in range(args.scrapes):
            begun = time.perf_counter()
            response = requests.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10)
            timings.append((time.perf_counter() - begun) * 1000)
            assert response.status_code == 200
        print(
            f"/metrics over HTTP, {args.scrapes} scrapes on new connections: {percentiles(timings)}; "
            f"{len(response.content)} bytes"
        )
        time.sleep(0.5)
        served = [
            float(json.loads(line)["message"].rsplit(" ", 1)[1].rstrip("ms"))
            for line in (work / "web.log").read_text().splitlines()[log_lines_before:]
            if line.startswith("{") and '"GET /metrics 200 ' in line
        ]
        print(f"/metrics inside the server (its access line's duration): {percentiles(served)}")
        print(
            f"multiprocess files left: {len(list(metrics_dir.glob('*.db')))} "
            f"({', '.join(sorted(p.name for p in metrics_dir.glob('*.db')))})"
        )
        files, horse_timings = per_process_files_comparison(args.jobs)
        print(
            f"for comparison, per-process files of {args.jobs} work horses: {files} files, "
            f"reading them: {percentiles(horse_timings)}"
        )
        return 0 if actual == expected and max(timings) < 100 else 1
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=30)
        store.flushdb()


if __name__ == "__main__":
    sys.exit(main())
