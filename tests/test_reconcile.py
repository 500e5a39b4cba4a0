"""What Redis forgets, the database still knows: dedup across a flush, jobs rq lost, one reconciler.

Against the real Redis and PostgreSQL, no worker: the rq side is read and emptied directly.
"""

from __future__ import annotations

import django_rq
import pytest
from django.db import IntegrityError
from django.utils import timezone
from rq.job import Job as RqJob

from core.redis import redis_client
from queries import services
from queries.models import Job, QueryRequest
from queries.services.operations import RECONCILE_LOCK
from queries.services.workers import CURRENT_JOB_FIELD, workers_alive
from tests.support.factories import JobFactory, failed_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_db")]


def default_queue_ids() -> list[str]:
    return django_rq.get_queue("default").get_job_ids()


def test_an_identical_submission_after_a_flush_joins_the_job_still_queued():
    first = services.query_submit(api_key=None, query="What is the capital of Peru?")
    redis_client().flushdb()  # the dedup mark, the queue and the rq job are gone

    second = services.query_submit(api_key=None, query="what is the capital of  peru?")
    assert second.job_id == first.job_id and second.outcome == QueryRequest.Outcome.DEDUPLICATED
    assert Job.objects.count() == 1
    # The mark names the job again, so the next identical submissions join it through Redis.
    job = Job.objects.get()
    assert redis_client().get(f"dedup:{job.hash}").decode() == str(job.id)
    third = services.query_submit(api_key=None, query="What is the capital of Peru?")
    assert third.job_id == job.id and QueryRequest.objects.filter(job=job).count() == 3


def test_the_database_refuses_a_second_active_job_for_a_hash():
    job = JobFactory(state=Job.State.RUNNING, finished_at=None)
    JobFactory(hash=job.hash)  # finished jobs may share it
    JobFactory(hash=job.hash, state=Job.State.QUEUED, finished_at=None, deduplicated=False)
    with pytest.raises(IntegrityError):
        JobFactory(hash=job.hash, state=Job.State.QUEUED, finished_at=None)


def test_without_dedup_identical_submissions_still_make_their_own_jobs(settings):
    settings.DEDUP_ENABLED = False
    a = services.query_submit(api_key=None, query="What is 3+3?")
    b = services.query_submit(api_key=None, query="What is 3+3?")
    assert a.job_id != b.job_id and Job.objects.count() == 2


def test_retrying_a_failed_job_after_a_flush_joins_the_identical_job_in_flight():
    old = failed_job(hash="a" * 64)
    active = JobFactory(hash=old.hash, state=Job.State.QUEUED, finished_at=None)
    retry = services.job_retry(job_id=old.id)
    assert retry.job.id == active.id and not retry.created


def test_queued_jobs_that_rq_lost_are_queued_again_and_the_others_left_alone():
    lost = services.query_submit(api_key=None, query="lost with the flush").job_id
    popped = services.query_submit(api_key=None, query="popped by a worker that lost Redis").job_id
    done = services.query_submit(api_key=None, query="failed in rq before its row was claimed").job_id
    kept = services.query_submit(api_key=None, query="still on its queue").job_id
    redis = redis_client()
    RqJob.fetch(str(lost), connection=django_rq.get_connection()).delete()
    redis.lrem("rq:queue:default", 0, str(popped))
    redis.hset(f"rq:job:{done}", "status", "failed")
    redis.lrem("rq:queue:default", 0, str(done))

    done_pass = services.jobs_reconcile(grace_seconds=0, settle_running=False)
    assert done_pass is not None
    assert {job.id for job in done_pass.requeued} == {lost, popped, done}
    assert sorted(default_queue_ids()) == sorted(str(i) for i in (lost, popped, done, kept))
    assert Job.objects.filter(state=Job.State.QUEUED).count() == 4


def test_a_queued_job_started_by_no_live_worker_is_queued_again():
    job_id = services.query_submit(api_key=None, query="started by a worker that died").job_id
    redis = redis_client()
    redis.lrem("rq:queue:default", 0, str(job_id))
    redis.hset(f"rq:job:{job_id}", "status", "started")
    assert [j.id for j in services.jobs_requeue_lost(grace_seconds=0)] == [job_id]


def test_one_reconciler_at_a_time():
    lock = redis_client().lock(RECONCILE_LOCK, timeout=30)
    assert lock.acquire(blocking=False)
    try:
        assert services.jobs_reconcile(grace_seconds=0) is None
    finally:
        lock.release()
    assert services.jobs_reconcile(grace_seconds=0) is not None


def test_a_running_job_named_by_a_live_worker_is_not_settled(settings):
    from rq import Worker

    from queries.worker import GatewayInProcessWorker

    worker = GatewayInProcessWorker(
        ["default"], connection=django_rq.get_connection(), name="other-host-worker"
    )
    worker.hostname = "other-host"
    worker.register_birth()
    started = timezone.now() - timezone.timedelta(minutes=5)
    running = JobFactory(
        state=Job.State.RUNNING, finished_at=None, started_at=started, worker_name="other-host:7"
    )
    orphan = JobFactory(
        state=Job.State.RUNNING, finished_at=None, started_at=started, worker_name="other-host:8"
    )
    worker.connection.hset(worker.key, CURRENT_JOB_FIELD, str(running.id))
    assert [w.name for w in workers_alive(redis=worker.connection)] == ["other-host-worker"]

    settled = services.job_reconcile_stale(grace_seconds=60)
    assert [job.id for job, _ in settled] == [orphan.id]
    running.refresh_from_db()
    assert running.state == Job.State.RUNNING
    # Heard from too long ago: dead, and its job with it.
    worker.connection.hset(worker.key, "last_heartbeat", "2020-01-01T00:00:00.000000Z")
    assert workers_alive(redis=worker.connection) == []
    assert Worker.count(connection=worker.connection) == 1
    assert [job.id for job, _ in services.job_reconcile_stale(grace_seconds=60)] == [running.id]


def test_a_workers_sweep_settles_the_running_job_of_a_silent_worker_on_another_host(settings):
    """Another host's worker that died (SIGKILL, a lost machine) leaves its job running: the sweep of
    a worker here ends it ``worker_lost`` once that worker has been silent for WORKER_STALE_AFTER."""
    from queries.worker import GatewayInProcessWorker

    settings.WORKER_STALE_AFTER = 10
    connection = django_rq.get_connection()
    dead = GatewayInProcessWorker(["default"], connection=connection, name="dead-host-worker")
    dead.hostname = "dead-host"
    dead.register_birth()
    started = timezone.now() - timezone.timedelta(seconds=15)
    lost = JobFactory(
        state=Job.State.RUNNING, finished_at=None, started_at=started, worker_name="dead-host:7"
    )
    connection.hset(dead.key, CURRENT_JOB_FIELD, str(lost.id))
    # Its last heartbeat was 12 s ago; its registration has not expired yet.
    beat = timezone.now() - timezone.timedelta(seconds=12)
    connection.hset(dead.key, "last_heartbeat", beat.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    young = JobFactory(
        state=Job.State.RUNNING,
        finished_at=None,
        started_at=timezone.now() - timezone.timedelta(seconds=2),
        worker_name="dead-host:8",
    )

    sweeper = GatewayInProcessWorker(["default"], connection=connection, name="sweeper")
    sweeper._maintenance()

    lost.refresh_from_db()
    young.refresh_from_db()
    assert (lost.state, lost.error_type) == (Job.State.FAILED, Job.ErrorType.WORKER_LOST)
    # Started after the last heartbeat could have named it: not judged yet.
    assert young.state == Job.State.RUNNING
