"""What one job costs the gateway in SQL queries and Redis round trips, counted.

The real CLI runs against the mock; the gateway's in-process worker takes the jobs in this process
(burst mode), so its heartbeats and bookkeeping count too. The assertions keep redundant lookups and
writes from coming back; bench/ measures the CPU they cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import django_rq
import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from redis.client import Pipeline, Redis

from queries import services
from queries.models import Job
from queries.worker import GatewayInProcessWorker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_db")]

JOBS = 4


class RedisCounter:
    def __init__(self) -> None:
        self.round_trips = 0
        self.commands = 0


@pytest.fixture
def redis_counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisCounter]:
    counter = RedisCounter()
    plain, execute = Redis.execute_command, Pipeline.execute

    def counted(self: Redis, *args: Any, **options: Any) -> Any:
        if not isinstance(self, Pipeline):  # a pipeline's commands go out with execute()
            counter.round_trips += 1
            counter.commands += 1
        return plain(self, *args, **options)

    def counted_execute(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
        if self.command_stack:
            counter.round_trips += 1
            counter.commands += len(self.command_stack)
        return execute(self, *args, **kwargs)

    monkeypatch.setattr(Redis, "execute_command", counted)
    monkeypatch.setattr(Pipeline, "execute", counted_execute)
    yield counter


def test_a_job_reads_its_creator_once_and_writes_its_row_three_times(
    real_claude, api_key, redis_counter, capsys
):
    key, _ = api_key
    for i in range(JOBS):
        services.query_submit(api_key=key, query=f"What is {i}+{i}?")
    redis_counter.round_trips = redis_counter.commands = 0
    with CaptureQueriesContext(connection) as queries:
        queues = [django_rq.get_queue(name) for name in settings.RQ_QUEUE_NAMES]
        GatewayInProcessWorker(queues, connection=queues[0].connection).work(burst=True)
    assert Job.objects.filter(state=Job.State.COMPLETED).count() == JOBS

    sql = [q["sql"] for q in queries.captured_queries]
    with capsys.disabled():  # the figures, for the record (the worker's start-up included)
        print(
            f"\nper job: {len(sql) / JOBS:.1f} SQL queries, {redis_counter.round_trips / JOBS:.1f} Redis"
            f" round trips ({redis_counter.commands / JOBS:.1f} commands)"
        )
    # The job's row is written three times: claimed, its CLI started, its final state with the answer.
    assert sum(q.startswith('UPDATE "queries_job"') for q in sql) == 3 * JOBS
    # The creating request is read once per job, with its key's budget (the webhooks read the job's
    # requests on their own).
    lookups = [
        q for q in sql if 'FROM "queries_queryrequest"' in q and '"queries_queryrequest"."job_id" =' in q
    ]
    assert sum("monthly_budget_usd" in q for q in lookups) == JOBS
    # The key's budget comes with the creating request: no query of its own.
    assert not any('FROM "queries_apikey"' in q for q in sql)
