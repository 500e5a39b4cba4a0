"""Memory (RSS and PSS) per process at rest: gunicorn's, the rq pool's, and each warm CLI's."""

from __future__ import annotations

import statistics
from typing import Any

from procs import children, descendants, memory_kib
from stack import Gateway, Setup, warm_clis, worker_pids


def measure(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    return {"memory": memory(gateway)}


def describe(pids: list[int]) -> dict[str, Any]:
    readings = [memory_kib(pid) for pid in pids]
    return {
        "count": len(pids),
        "rss_mib_each": statistics.fmean(r[0] for r in readings) / 1024 if readings else 0,
        "pss_mib_total": sum(r[1] for r in readings) / 1024,
    }


def memory(gateway: Gateway) -> dict[str, Any]:
    workers = worker_pids(gateway.workers) if gateway.workers else []
    clis = warm_clis(workers)
    trees = [[cli, *descendants(cli)] for cli in clis]
    per_cli = [[memory_kib(p) for p in tree] for tree in trees]
    return {
        "web_master": describe([gateway.web.pid]),
        "web_workers": describe(children(gateway.web.pid)),
        "worker_pool_master": describe(gateway.workers.masters if gateway.workers else []),
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
