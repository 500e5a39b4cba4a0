"""The waiting clients' latency again after the stack lived through a worker's death and a Redis
restart: does the warm pool come back, and is the latency what it was?

1. ``claude_cli_pool_*`` from /metrics, the warm CLIs and the rq workers' registrations;
2. SIGKILL of one rq worker process and of its warm CLIs (each its own process group):
   rqworker-pool starts another, which starts its CLIs; the wait for the pool to be whole again;
3. the benchmark's own redis-server stopped and an empty one started on the same port
   (stack.restart_own_redis): the wait for the pool again, and the registrations after it;
4. the waiting clients measured again (bench/waiting.py), then /metrics again: the counters start
   from nothing with the new Redis, so the hits after it are the jobs that found a warm CLI.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from typing import Any

import redis
import requests
from procs import descendants, say
from stack import Gateway, Setup, restart_own_redis, wait_pool_ready, warm_clis, worker_pids
from waiting import waiting_latency

HEAL_TIMEOUT = 90.0


def pool_metrics(gateway: Gateway) -> list[str]:
    """The ``claude_cli_pool_*`` samples of /metrics, as printed there."""
    try:
        text = requests.get(f"{gateway.url}/metrics", timeout=30).text
    except requests.RequestException as exc:
        return [f"unreadable: {exc}"]
    return [line for line in text.splitlines() if line.startswith("claude_cli_pool_")]


def registered(setup: Setup) -> int | str:
    try:
        return redis.Redis.from_url(setup.redis_url, socket_timeout=2).scard("rq:workers")
    except redis.RedisError as exc:
        return f"unreadable ({type(exc).__name__})"


def heal_time(setup: Setup, gateway: Gateway, what: str) -> float | None:
    """Seconds until the warm pool is whole again, or None if it is not within HEAL_TIMEOUT."""
    assert gateway.workers is not None
    started = time.monotonic()
    try:
        wait_pool_ready(setup, gateway.workers, timeout=HEAL_TIMEOUT)
    except RuntimeError as exc:
        say(f"recovery: after {what}, {exc}")
        return None
    return time.monotonic() - started


def kill_worker(gateway: Gateway) -> tuple[int, list[int]]:
    """SIGKILL one rq worker and everything under it (its warm CLIs lead process groups of their own)."""
    assert gateway.workers is not None
    victim = worker_pids(gateway.workers)[0]
    below = descendants(victim)
    with suppress(ProcessLookupError):
        os.kill(victim, signal.SIGKILL)
    for pid in below:
        with suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return victim, below


def measure(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    assert gateway.workers is not None
    before = pool_metrics(gateway)
    say("recovery: claude_cli_pool_* before: " + "; ".join(before))
    warm_before = len(warm_clis(worker_pids(gateway.workers)))
    registered_before = registered(setup)

    victim, below = kill_worker(gateway)
    say(f"recovery: SIGKILL of rq worker {victim} and its {len(below)} descendants")
    time.sleep(0.5)
    warm_after_kill = len(warm_clis(worker_pids(gateway.workers)))
    worker_heal = heal_time(setup, gateway, "the worker's death")
    say(f"recovery: warm pool whole again after {worker_heal} s")

    restart_own_redis(setup)
    say("recovery: the benchmark's Redis restarted, empty")
    redis_heal = heal_time(setup, gateway, "the Redis restart")
    # Workers register again on their next heartbeat or wake-up; give them one interval.
    time.sleep(2)
    registered_after = registered(setup)
    say(f"recovery: warm pool after the Redis restart: {redis_heal} s; registered {registered_after}")

    n = max(2, setup.args.latency_n // 2)
    recovered = waiting_latency(setup, gateway, f"{run_id}-rec", n)
    after = pool_metrics(gateway)
    say("recovery: claude_cli_pool_* after: " + "; ".join(after))
    return {
        "recovery": {
            "pool_metrics_before": before,
            "pool_metrics_after": after,
            "warm_before": warm_before,
            "warm_after_kill": warm_after_kill,
            "worker_heal_s": worker_heal,
            "redis_heal_s": redis_heal,
            "registered_before": registered_before,
            "registered_after": registered_after,
            "waiting": recovered,
        }
    }
