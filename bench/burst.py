"""A burst of distinct queries submitted at once, until all are answered (jobs/s), with the gateway's
own CPU per job during it (web and worker processes, work horses included, the CLI and its MCP
servers excluded) and the CLI's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from procs import Proc, children, cli_seconds, cmdline, say, wait_until
from stack import FINISHED, PYTHON, Gateway, Setup, post, wait_pool_ready


def measure(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    n = setup.args.burst_n
    wait_pool_ready(setup, gateway.workers, timeout=90)
    say(f"burst: {n} distinct queries at once")
    account = CpuAccount(gateway.web.pid, gateway.workers.pid, Path(setup.env["BENCH_CLI_TIMES"]))
    figures = burst(setup, gateway, n, run_id, account)
    wait_pool_ready(setup, gateway.workers, timeout=90)
    return {"burst": figures}


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

    @contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        figures: dict[str, float] = {}
        web_before, workers_before = self.long_lived()
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
