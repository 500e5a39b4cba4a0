"""What the per-key quotas cost a submission, and how exact they are under a threaded burst.

Times quota_rate_take and quota_jobs_acquire (one Lua script each against the real Redis) one call at
a time, then fires BURST concurrent callers at a limit of LIMIT from THREADS threads and counts how
many were admitted (it must be exactly LIMIT for both).

    .venv/bin/python bench/quota_check.py [--calls 2000] [--burst 200] [--limit 50] [--threads 50]

It needs Redis and uses REDIS_URL (default redis://127.0.0.1:6379/9), which must be an empty
database unless --flush is given. No database rows are needed: the keys are unsaved ApiKey objects.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from figures import percentile  # noqa: E402  (bench/, the script's own directory)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--flush", action="store_true", help="empty the Redis database first")
    args = parser.parse_args()

    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
    os.environ.setdefault("GATEWAY_VAR_DIR", tempfile.mkdtemp(prefix="quota-bench-"))
    import django

    django.setup()
    from core.redis import redis_client
    from queries import quotas
    from queries.models import ApiKey

    redis = redis_client()
    if args.flush:
        redis.flushdb()
    elif redis.dbsize():
        sys.exit(f"{os.environ['REDIS_URL']} is not empty; pass --flush to empty it")

    def key(pk: int, **limits: int) -> ApiKey:
        api_key = ApiKey(pk=pk, name=f"bench {pk}", **limits)
        # The in-flight set counts as in sync with the (absent) database: no rebuild or reconcile query.
        redis.set(quotas.JOBS_SYNCED_KEY.format(pk), "1", ex=3600)
        redis.set(quotas.JOBS_RECONCILED_KEY.format(pk), "1", ex=3600)
        return api_key

    def timed(call, n: int) -> list[float]:
        samples = []
        for i in range(n):
            started = time.perf_counter()
            call(i)
            samples.append((time.perf_counter() - started) * 1000)
        return samples

    generous = key(1, rate_limit_per_minute=10**9, max_concurrent_jobs=10**9)
    rate = timed(lambda i: quotas.quota_rate_take(api_key=generous), args.calls)
    acquire = timed(lambda i: quotas.quota_jobs_acquire(api_key=generous, job_id=uuid.uuid4()), args.calls)
    for name, samples in (
        ("rate limit (quota_rate_take)", rate),
        ("concurrency slot (quota_jobs_acquire)", acquire),
    ):
        print(
            f"{name:40s} p50 {statistics.median(samples):.3f} ms  p95 {percentile(samples, 95):.3f} ms  "
            f"p99 {percentile(samples, 99):.3f} ms  over {len(samples)} calls"
        )

    def burst(attempt) -> int:
        barrier = threading.Barrier(args.threads)
        per_thread = -(-args.burst // args.threads)

        def worker(t: int) -> int:
            barrier.wait(timeout=30)
            admitted = 0
            for i in range(per_thread):
                if t * per_thread + i >= args.burst:
                    break
                try:
                    attempt(t * per_thread + i)
                    admitted += 1
                except quotas.QuotaExceeded:
                    pass
            return admitted

        with ThreadPoolExecutor(max_workers=args.threads) as pool:
            return sum(pool.map(worker, range(args.threads)))

    limited_rate = key(2, rate_limit_per_minute=args.limit)
    limited_jobs = key(3, max_concurrent_jobs=args.limit)
    admitted_rate = burst(lambda i: quotas.quota_rate_take(api_key=limited_rate))
    admitted_jobs = burst(lambda i: quotas.quota_jobs_acquire(api_key=limited_jobs, job_id=uuid.uuid4()))
    print(f"burst of {args.burst} against a rate limit of {args.limit}:        admitted {admitted_rate}")
    print(f"burst of {args.burst} against a concurrency limit of {args.limit}: admitted {admitted_jobs}")
    redis.flushdb()
    if admitted_rate != args.limit or admitted_jobs != args.limit:
        sys.exit("a limit admitted the wrong number")


if __name__ == "__main__":
    main()
