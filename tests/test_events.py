"""Job event streams in the real Redis: cap, TTL, reading from the start and after an id, the
fallback to the job's row, and a cache hit's replay."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest
from django.utils import timezone
from redis import Redis

from queries.models import Job
from queries.prompts import Prompt
from queries.services import events, query_submit
from queries.services.run import job_fail

pytestmark = pytest.mark.django_db(transaction=True)


def collect(job_id: Any, *, after: str = "0-0", ping_every: float = 0.2, pings: int = 50) -> list[Any]:
    async def run() -> list[Any]:
        seen: list[Any] = []
        async for item in events.job_events(job_id, after=after, ping_every=ping_every):
            seen.append(item)
            if item is None and seen.count(None) >= pings:
                break
        return seen

    return asyncio.run(run())


def make_job(**fields: Any) -> Job:
    defaults: dict[str, Any] = {"hash": "0" * 64, "query": "q", "normalized_query": "q"}
    return Job.objects.create(**{**defaults, **fields})


def test_events_are_read_from_the_start_and_after_an_id(redis_db: Redis) -> None:
    job_id = uuid.uuid4()
    ids = [events.events_append(job_id, {"type": "text", "text": str(n)}) for n in range(5)]

    everything = events.events_read(job_id)
    assert [event["text"] for _, event in everything] == ["0", "1", "2", "3", "4"]
    assert [entry_id for entry_id, _ in everything] == ids
    after = events.events_read(job_id, after=ids[2])
    assert [event["text"] for _, event in after] == ["3", "4"]
    assert asyncio.run(events.aevents_read(job_id, after=ids[3])) == after[1:]


def test_the_stream_is_capped_and_expires(redis_db: Redis, settings: Any) -> None:
    settings.EVENTS_MAXLEN = 100
    settings.EVENTS_TTL = 30
    job_id = uuid.uuid4()
    for n in range(1000):
        events.events_append(job_id, {"type": "text", "text": str(n)})

    key = events.events_key(job_id)
    # MAXLEN ~ trims whole radix-tree nodes: about the cap, never the whole thousand.
    assert 100 <= redis_db.xlen(key) < 1000
    assert 0 < redis_db.ttl(key) <= 30
    assert events.events_read(job_id, count=2000)[-1][1]["text"] == "999"


def test_a_reader_gets_every_event_until_the_final_one(redis_db: Redis) -> None:
    job = make_job()
    events.events_append(job.id, {"type": "progress", "state": "queued", "progress": 0})

    def produce() -> None:
        for n in range(3):
            time.sleep(0.1)
            events.events_append(job.id, {"type": "text", "text": f"part {n} "})
        events.events_append(job.id, {"type": "result", "result": {"response": "part 0 part 1 part 2 "}})
        events.events_append(job.id, {"type": "text", "text": "never read"})

    producer = threading.Thread(target=produce)
    producer.start()
    seen = [item for item in collect(job.id, ping_every=0.05) if item is not None]
    producer.join()

    assert [event["type"] for _, event in seen] == ["progress", "text", "text", "text", "result"]
    assert "".join(event.get("text", "") for _, event in seen) == "part 0 part 1 part 2 "


def test_a_reconnect_resumes_after_the_last_event_it_saw(redis_db: Redis) -> None:
    job = make_job()
    first = events.events_append(job.id, {"type": "text", "text": "a"})
    events.events_append(job.id, {"type": "text", "text": "b"})
    events.events_append(job.id, {"type": "result", "result": {"response": "ab"}})
    assert first is not None

    resumed = collect(job.id, after=first)
    assert [event for _, event in resumed] == [
        {"type": "text", "text": "b"},
        {"type": "result", "result": {"response": "ab"}},
    ]


def test_pings_come_while_nothing_happens(redis_db: Redis) -> None:
    job = make_job()
    events.events_append(job.id, {"type": "progress", "state": "queued", "progress": 0})

    seen = collect(job.id, ping_every=0.05, pings=3)
    assert seen[0][1]["type"] == "progress" and seen[1:] == [None, None, None]


def test_a_finished_job_without_a_stream_ends_with_its_final_event_from_the_row(redis_db: Redis) -> None:
    job = make_job(state=Job.State.COMPLETED, response="4", stop_reason="end_turn", progress=100)
    Job.objects.filter(id=job.id).update(finished_at=timezone.now())

    seen = collect(job.id, ping_every=5.0)  # answered at once, not after a ping interval
    assert len(seen) == 1
    entry_id, event = seen[0]
    assert event["type"] == "result" and event["result"]["response"] == "4"
    assert event["result"]["stopReason"] == "end_turn"
    # A valid stream id: a reconnect naming it is answered the same way.
    assert collect(job.id, after=entry_id, ping_every=5.0) == seen


def test_a_failed_job_appends_its_error_as_the_final_event(redis_db: Redis) -> None:
    job = make_job(state=Job.State.RUNNING, cli_output={"api_error_status": 429})
    job_fail(job=job, error_type=Job.ErrorType.CLI_ERROR, message="API Error: 429")

    (entry_id, event), *rest = events.events_read(job.id)
    assert rest == []
    assert event == {
        "type": "error",
        "error": {"type": "cli_error", "message": "API Error: 429", "status": 429},
    }


def test_a_stream_flushed_away_mid_job_falls_back_to_the_row_once_the_job_ends(redis_db: Redis) -> None:
    job = make_job(state=Job.State.RUNNING)

    def finish() -> None:
        time.sleep(0.3)
        redis_db.flushdb()
        # The row is final, the stream gone with its final event never written.
        Job.objects.filter(id=job.id).update(
            state=Job.State.FAILED,
            error_type=Job.ErrorType.CLI_TIMEOUT,
            error_message="too slow",
            finished_at=timezone.now(),
        )

    finisher = threading.Thread(target=finish)
    finisher.start()
    seen = [item for item in collect(job.id, ping_every=0.1) if item is not None]
    finisher.join()
    assert seen[-1][1]["error"]["type"] == "cli_timeout"


def test_replay_streams_a_cached_result_as_progress_text_and_result() -> None:
    result = {"response": "4", "format": "text", "stopReason": "end_turn"}
    assert events.replay(result) == [
        {"type": "progress", "state": "running", "progress": 80},
        {"type": "text", "text": "4"},
        {"type": "result", "result": result},
    ]


def test_a_new_job_starts_its_stream_with_a_queued_event(client: Any, redis_db: Redis) -> None:
    submission = query_submit(api_key=None, prompt=Prompt.of_text("hello there"))
    assert events.events_read(submission.job_id)[0][1] == {
        "type": "progress",
        "state": "queued",
        "progress": 0,
    }


def test_a_reader_whose_pooled_connection_redis_closed_reads_on_at_once(redis_db: Redis) -> None:
    """After a Redis restart each pooled connection fails once ("Connection closed by server"): the
    reader must not take it for an outage and wait a ping period before it looks again."""
    job = make_job()
    events.events_append(job.id, {"type": "progress", "state": "queued", "progress": 0})
    events.events_append(job.id, {"type": "result", "result": {"response": "4"}})

    async def run() -> tuple[list[Any], float]:
        client = events.async_redis()
        own_id = await client.client_id()  # a pooled connection, idle now
        redis_db.client_kill_filter(_id=own_id)  # the server closes it, as a restart would
        started = time.monotonic()
        seen = [item async for item in events.job_events(job.id, ping_every=5)]
        return seen, time.monotonic() - started

    seen, took = asyncio.run(run())
    assert [event["type"] for _, event in seen] == ["progress", "result"]
    assert took < 5  # not the ping period the outage path sleeps
