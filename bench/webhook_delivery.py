"""Webhook delivery figures: time from a job's outcome to the receiver, throughput, and sweep cost.

Creates DELIVERIES finished requests with a webhook URL to a real receiver on loopback, records
their deliveries as the job-finished hook does, and lets a real `manage.py rqworker-pool` (each
try in a forked work horse, as in production) send them, signed. Prints the time from the outcome
to the receiver for deliveries made one at a time, the cost of recording one, and how fast a backlog
drains. Then flushes Redis, makes every delivery due again and times `reconcile`'s sweep over them.

    .venv/bin/python bench/webhook_delivery.py [--deliveries 300] [--singles 20] [--workers 2]

It needs Redis and uses REDIS_URL (default redis://127.0.0.1:6379/8), which must be an empty
database unless --flush is given; the database is a throwaway SQLite file.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from figures import percentile  # noqa: E402  (bench/, the script's own directory)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--singles", type=int, default=20)
    parser.add_argument("--flush", action="store_true", help="flush REDIS_URL's database first")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    from webhooks.signing import secret_generate

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        "DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}",
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/8"),
        "GATEWAY_VAR_DIR": str(tmp),
        "CLAUDE_WORKDIR": str(tmp / "workdir"),
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "WEBHOOK_SECRET": secret_generate(),
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)

    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone
    from rq import Worker

    from core.redis import redis_client
    from queries.models import Job, QueryRequest
    from tests.support.receivers import Receiver
    from webhooks import services
    from webhooks.models import WebhookDelivery

    redis = redis_client()
    if args.flush:
        redis.flushdb()
    elif redis.dbsize():
        sys.exit(f"{env['REDIS_URL']} is not empty; pass --flush to empty it")
    call_command("migrate", verbosity=0)

    def finished_requests(count: int, url) -> list[Job]:  # type: ignore[no-untyped-def]
        jobs = Job.objects.bulk_create(
            Job(
                hash=uuid.uuid4().hex * 2,
                query="q",
                normalized_query="q",
                state=Job.State.COMPLETED,
                progress=100,
                response="4",
                finished_at=timezone.now(),
            )
            for _ in range(count)
        )
        QueryRequest.objects.bulk_create(
            QueryRequest(job=job, query="q", hash=job.hash, outcome="queued", webhook_url=url(job))
            for job in jobs
        )
        return jobs

    pool = subprocess.Popen(
        [sys.executable, "manage.py", "rqworker-pool", "high", "--num-workers", str(args.workers)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(Worker.all(connection=redis)) < args.workers:
            if time.monotonic() > deadline or pool.poll() is not None:
                sys.exit("the worker pool did not start")
            time.sleep(0.1)

        with Receiver() as receiver:
            # One at a time, with idle workers: what a caller waits after the outcome is known.
            single: list[float] = []
            for job in finished_requests(args.singles, lambda job: receiver.url(f"/{job.id}")):
                started = time.time()
                services.webhook_on_job_finished(job=job)
                got = receiver.wait_for(len(single) + 1, timeout=30)[-1]
                single.append((got.at - started) * 1000)

            # All at once: how fast a backlog drains.
            jobs = finished_requests(args.deliveries, lambda job: receiver.url(f"/{job.id}"))
            began = time.time()
            for job in jobs:
                services.webhook_on_job_finished(job=job)
            create_ms = (time.time() - began) * 1000 / len(jobs)
            received = receiver.wait_for(args.singles + args.deliveries, timeout=300)
            ended = max(r.at for r in received)
    finally:
        # The pool passes the signal on to its workers; signalling the whole group as well makes
        # rq's workers sometimes miss their shutdown until their queue wait times out.
        pool.send_signal(signal.SIGTERM)
        try:
            pool.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(pool.pid, signal.SIGKILL)
            pool.wait()

    succeeded = WebhookDelivery.objects.filter(state="succeeded").count()
    print(
        f"rq workers: {args.workers}; deliveries succeeded: {succeeded} of {args.singles + args.deliveries}"
    )
    print(
        f"outcome to receipt, one at a time ({args.singles}): p50 {statistics.median(single):.0f} ms, "
        f"p95 {percentile(single, 95):.0f} ms, max {max(single):.0f} ms"
    )
    print(f"record + enqueue a delivery: {create_ms:.2f} ms each")
    print(
        f"a backlog of {args.deliveries} drained in {ended - began:.1f} s: "
        f"{args.deliveries / (ended - began):.1f} deliveries/s"
    )

    redis.flushdb()
    WebhookDelivery.objects.update(
        state="pending", attempts=0, next_attempt_at=timezone.now(), finished_at=None
    )
    started = time.perf_counter()
    passes = swept = 0
    while True:
        count = services.webhook_deliveries_sweep()
        passes += 1
        swept += count
        if count < services.SWEEP_BATCH:
            break
    sweep_s = time.perf_counter() - started
    print(
        f"sweep after a Redis flush: {swept} due deliveries re-queued in {sweep_s * 1000:.0f} ms "
        f"({passes} pass(es), {swept / sweep_s:.0f}/s)"
    )
    redis.flushdb()


if __name__ == "__main__":
    main()
