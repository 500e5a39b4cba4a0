"""A burst of distinct queries submitted at once, until all are answered (jobs/s), with the gateway's
own CPU per job during it (web and worker processes, work horses included, the CLI and its MCP
servers excluded) and the CLI's.

The burst runs with the workers as the stack started them (``--workers``), then with the other way
of running them (stack.WORKER_MODES: the rqworker-pool, or separate rqworker processes), each compared
with the bare CLI's ``xargs -P``. ``--burst-rounds R`` repeats the pair R times (alternating which
goes first) and adds a bare ``xargs -P`` run beside each round, so that each ratio has a reference
taken moments apart on a machine shared with other work; every figure is kept and the median reported.

Each burst also reads its jobs' rows: how long a job waited in the queue, ran (started to finished,
the CLI included), and how long its worker took from finishing its previous job to starting this one
(the gap: dequeue, bookkeeping, refills), per job and per worker.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from bare import bare_parallel
from procs import Proc, children, cli_seconds, cmdline, memory_kib, say
from stack import (
    PYTHON,
    WORKER_MODES,
    Gateway,
    Setup,
    Workers,
    post,
    start_workers,
    wait_final,
    wait_pool_ready,
)

# The bench's own database connections, told apart from the gateway's by this application_name.
BENCH_APP = "bench"


def fetch(database_url: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True, application_name=BENCH_APP) as conn:
        return conn.execute(sql, params).fetchall()


def measure(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    """The burst with each way of running the workers; the stack's own way is left running after."""
    assert gateway.workers is not None
    n, rounds = setup.args.burst_n, setup.args.burst_rounds
    first = setup.args.workers
    other = next(mode for mode in WORKER_MODES if mode != first)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in WORKER_MODES}
    references: list[dict[str, Any]] = []
    for i in range(rounds):
        order = (first, other) if i % 2 == 0 else (other, first)
        if rounds > 1:
            say(f"burst round {i + 1} of {rounds}: bare CLI, xargs -P{setup.args.concurrency}")
            references.append(bare_parallel(setup, n, setup.args.concurrency, f"{run_id}r{i}"))
        for mode in order:
            switch_workers(setup, gateway, mode)
            wait_pool_ready(setup, gateway.workers, timeout=90)
            say(f"burst: {n} distinct queries at once, workers {mode}")
            account = CpuAccount(
                gateway.web.pid, gateway.workers, Path(setup.env["BENCH_CLI_TIMES"]), setup.database_url
            )
            memory = workers_memory(gateway.workers)
            figures = burst(setup, gateway, n, f"{run_id}r{i}{mode[0]}", account)
            figures["workers_memory"] = memory
            if references:
                figures["reference_per_second"] = references[-1]["per_second"]
            say(f"burst, workers {mode}: {figures['per_second']:.2f}/s; {phases_line(figures['phases'])}")
            runs[mode].append(figures)
    switch_workers(setup, gateway, first)
    wait_pool_ready(setup, gateway.workers, timeout=90)
    results: dict[str, Any] = {"burst": median_run(runs[first]), "burst_modes": {}}
    for mode in WORKER_MODES:
        results["burst_modes"][mode] = {"median": median_run(runs[mode]), "runs": runs[mode]}
    if references:
        results["burst_references"] = references
    return results


def workers_memory(workers: Workers) -> dict[str, float]:
    """RSS and PSS of the worker processes at rest, the pool's master included, in MiB."""
    readings = [memory_kib(pid) for pid in [*workers.masters, *workers.worker_pids()]]
    return {
        "processes": len(readings),
        "rss_mib_total": sum(r[0] for r in readings) / 1024,
        "pss_mib_total": sum(r[1] for r in readings) / 1024,
    }


def switch_workers(setup: Setup, gateway: Gateway, mode: str) -> None:
    assert gateway.workers is not None
    if gateway.workers.mode == mode:
        return
    say(f"stopping the workers ({gateway.workers.mode}), starting them {mode}")
    setup.stop(gateway.workers)
    setup.started[:] = [p for p in setup.started if p.poll() is None]
    gateway.workers = start_workers(setup, mode)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate (the lower middle one of an even count), with every rate and
    ratio (against the reference of its own round, when there is one) beside it."""
    ranked = sorted(runs, key=lambda run: run["per_second"])
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["all_per_second"] = [run["per_second"] for run in runs]
    if all("reference_per_second" in run for run in runs):
        chosen["all_ratios"] = [run["per_second"] / run["reference_per_second"] for run in runs]
    return chosen


def phases_line(phases: dict[str, Any]) -> str:
    return (
        f"queue wait p50 {phases['wait_p50'] * 1000:.0f} ms, run mean {phases['run_mean'] * 1000:.0f} ms,"
        f" gap between a worker's jobs mean {phases['gap_mean'] * 1000:.1f} ms"
        f" (max {phases['gap_max'] * 1000:.0f} ms), last job started"
        f" {phases['last_start'] * 1000:.0f} ms before the end, workers busy {phases['busy']:.0%},"
        f" jobs per worker {phases['jobs_per_worker']}"
    )


class CpuAccount:
    """The gateway's own CPU, apart from the CLI's, while jobs run.

    gunicorn and rq worker processes live through the measurement: their own CPU is read from /proc
    at its start and end. Work horses and CLIs come and go; a reaped process's CPU moves into its
    parent's "children" total, so a worker's grows by its work horses' CPU plus that of the CLIs it
    reaps (warm ones; a work horse reaps the CLI it started cold). The workers run the CLI under GNU
    time (bench/claude_timed), which records each CLI's CPU as it exits: the horses' CPU is what is
    left of the workers' children total once that is subtracted.
    """

    def __init__(self, web_root: int, workers: Workers, times_file: Path, database_url: str) -> None:
        self.web_root = web_root
        self.workers = workers
        self.times_file = times_file
        self.database_url = database_url

    def postgres(self) -> dict[int, float]:
        """The CPU of the PostgreSQL backends serving the gateway's connections (not the bench's)."""
        pids = fetch(
            self.database_url,
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name <> %s AND backend_type = 'client backend'",
            (BENCH_APP,),
        )
        return {pid: proc.cpu for (pid,) in pids if (proc := Proc.read(pid)) is not None}

    def long_lived(self) -> tuple[dict[int, Proc], dict[int, Proc]]:
        """(web processes, worker processes): gunicorn's, and the rq workers (the pool's master
        too) with rq's scheduler."""
        web = [self.web_root, *children(self.web_root)]
        own = self.workers.worker_pids()
        workers = [*self.workers.masters, *own]
        workers += [pid for w in own for pid in children(w) if self._scheduler(pid)]
        read = lambda pids: {pid: proc for pid in pids if (proc := Proc.read(pid)) is not None}  # noqa: E731
        return read(web), read(workers)

    @staticmethod
    def _scheduler(pid: int) -> bool:
        return cmdline(pid).startswith(str(PYTHON))

    @contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        figures: dict[str, float] = {}
        web_before, workers_before = self.long_lived()
        postgres_before = self.postgres()
        _, _, offset = cli_seconds(self.times_file, 0)
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
            figures["cli"], figures["clis_reaped"], _ = cli_seconds(self.times_file, offset)
            figures["horses"] = reaped - figures["cli"]
            postgres_after = self.postgres()
            figures["postgres"] = sum(cpu - postgres_before.get(p, 0.0) for p, cpu in postgres_after.items())


def burst(setup: Setup, gateway: Gateway, n: int, run_id: str, account: CpuAccount) -> dict[str, Any]:
    clients = threading.local()  # a connection per client thread
    queries = [f"burst {run_id} {i}: name {i} primes" for i in range(n)]
    with account.measure() as cpu:
        started = time.monotonic()

        def submit_and_wait(query: str) -> tuple[str, str]:
            # Each client waits with GET /api/query/{id}?wait=S: answered as soon as its job is final.
            own = getattr(clients, "session", None)
            if own is None:
                own = clients.session = gateway.session()
            job_id = post(own, gateway.url, query)["jobId"]
            return job_id, wait_final(own, gateway.url, job_id, timeout=300)["state"]

        with ThreadPoolExecutor(max_workers=min(n, 32)) as executor:
            outcomes = list(executor.map(submit_and_wait, queries))
        elapsed = time.monotonic() - started
        jobs = [job_id for job_id, _ in outcomes]
        phases = job_phases(setup, jobs)
    completed = sum(state == "completed" for _, state in outcomes)
    if completed != n:
        raise RuntimeError(f"burst: {n - completed} of {n} jobs did not complete")
    per_job = {k: v / n for k, v in cpu.items() if k in ("web", "worker_own", "horses", "cli", "postgres")}
    return {
        "n": n,
        "seconds": elapsed,
        "per_second": n / elapsed,
        "cpu_per_job": per_job,
        "clis_reaped": cpu["clis_reaped"],
        "phases": phases,
    }


def job_phases(setup: Setup, jobs: list[str]) -> dict[str, Any]:
    """From the jobs' rows: queue wait, run time, and each worker's gap between its jobs."""
    rows = fetch(
        setup.database_url,
        "SELECT worker_name, extract(epoch FROM created_at), extract(epoch FROM started_at),"
        " extract(epoch FROM finished_at) FROM queries_job WHERE id = ANY(%s::uuid[])",
        (jobs,),
    )
    by_worker: dict[str, list[tuple[float, float]]] = {}
    waits, runs = [], []
    for worker, created, started, finished in rows:
        created, started, finished = float(created), float(started), float(finished)
        waits.append(started - created)
        runs.append(finished - started)
        by_worker.setdefault(worker, []).append((started, finished))
    gaps = []
    for spans in by_worker.values():
        spans.sort()
        gaps += [nxt[0] - prev[1] for prev, nxt in zip(spans, spans[1:], strict=False)]
    end = max(float(r[3]) for r in rows)
    span = end - min(float(r[1]) for r in rows)
    return {
        "wait_p50": statistics.median(waits),
        "run_mean": statistics.fmean(runs),
        "gap_mean": statistics.fmean(gaps) if gaps else 0.0,
        "gap_max": max(gaps, default=0.0),
        "last_start": end - max(float(r[2]) for r in rows),
        # The share of the workers' time spent in jobs, from the first submission to the last answer.
        "busy": sum(runs) / (len(by_worker) * span) if span > 0 else 0.0,
        "jobs_per_worker": sorted(len(spans) for spans in by_worker.values()),
    }
