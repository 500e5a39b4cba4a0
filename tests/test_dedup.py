"""Deduplication and caching under concurrency, against the real Redis and PostgreSQL."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from core.redis import redis_client
from queries import services
from queries.models import Job, QueryRequest
from queries.services import dedup, journal, submit

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_db")]


def submit_in_threads(count: int, **kwargs) -> list[services.Submission]:
    barrier = threading.Barrier(count)

    def one(_: int) -> services.Submission:
        try:
            barrier.wait(timeout=30)
            return services.query_submit(api_key=None, **kwargs)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def test_fifty_concurrent_identical_submissions_make_one_job():
    results = submit_in_threads(50, query="What is the capital of France?")
    assert Job.objects.count() == 1
    job = Job.objects.get()
    assert {r.job_id for r in results} == {job.id}
    assert QueryRequest.objects.count() == 50
    assert len({r.request_id for r in results}) == 50
    outcomes = sorted(r.outcome for r in results)
    assert outcomes.count("queued") == 1 and outcomes.count("deduplicated") == 49
    assert redis_client().get(f"dedup:{job.hash}").decode() == str(job.id)
    ttl = redis_client().ttl(f"dedup:{job.hash}")
    assert 0 < ttl <= 300


def test_concurrent_submissions_differing_in_case_and_spacing_share_one_job():
    variants = ["What is 2+2?", "what is 2+2?", "  WHAT  is 2+2? ", "what\tis\n2+2?"]
    barrier = threading.Barrier(len(variants))

    def one(text: str) -> services.Submission:
        try:
            barrier.wait(timeout=30)
            return services.query_submit(api_key=None, query=text)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(variants)) as pool:
        results = list(pool.map(one, variants))
    assert Job.objects.count() == 1
    assert len({r.job_id for r in results}) == 1
    # The job runs the first submitter's text verbatim.
    assert Job.objects.get().query in variants


def test_different_models_do_not_share_a_job():
    a = services.query_submit(api_key=None, query="hi", model="opus")
    b = services.query_submit(api_key=None, query="hi", model="sonnet")
    assert a.job_id != b.job_id


def test_dedup_disabled_makes_a_job_per_submission(settings):
    settings.DEDUP_ENABLED = False
    results = submit_in_threads(5, query="same")
    assert Job.objects.count() == 5
    assert not list(redis_client().scan_iter("dedup:*"))
    assert {r.outcome for r in results} == {"queued"}


def test_a_mark_naming_a_finished_job_is_dropped_and_a_new_job_made():
    first = services.query_submit(api_key=None, query="q")
    Job.objects.filter(id=first.job_id).update(state=Job.State.FAILED)
    second = services.query_submit(api_key=None, query="q")
    assert second.job_id != first.job_id and second.outcome == "queued"
    assert redis_client().get(f"dedup:{Job.objects.get(id=second.job_id).hash}").decode() == str(
        second.job_id
    )


def test_a_mark_naming_a_job_that_never_appeared_is_taken_over(monkeypatch):
    monkeypatch.setattr(dedup, "DEDUP_JOIN_WAIT", 0.05)
    digest = services.query_hash(normalized="q", model=None, servers=[])
    redis_client().set(f"dedup:{digest}", "0b7e2a8e-2f6c-4d53-9d7c-3f1d2a8e0000", ex=300)
    submission = services.query_submit(api_key=None, query="q")
    assert submission.outcome == "queued"
    assert redis_client().get(f"dedup:{digest}").decode() == str(submission.job_id)


def test_release_only_clears_the_mark_of_the_same_job():
    redis_client().set("dedup:h", "job-b")
    services.dedup_release(query_hash="h", job_id="job-a")
    assert redis_client().get("dedup:h") == b"job-b"
    services.dedup_release(query_hash="h", job_id="job-b")
    assert redis_client().get("dedup:h") is None


@pytest.mark.parametrize("journaled", [True, False])
def test_cache_hit_is_recorded_and_answers_with_the_producing_job(settings, journaled):
    settings.CACHE_HIT_JOURNAL = journaled
    job = Job.objects.create(
        hash="0" * 64, query="q", normalized_query="q", state=Job.State.COMPLETED, response="A"
    )
    digest = services.query_hash(normalized="q", model=None, servers=[])
    Job.objects.filter(id=job.id).update(hash=digest)
    job.refresh_from_db()
    services.cache_put(job=job)
    submission = services.query_submit(api_key=None, query="  Q ")
    assert submission.outcome == "cached" and submission.job_id == job.id
    assert submission.result["response"] == "A"
    # Journaled, the row is written by a recorder (here, the drain) rather than in the request.
    assert QueryRequest.objects.count() == (0 if journaled else 1)
    assert journal.journal_drain() == (1 if journaled else 0)
    recorded = QueryRequest.objects.get()
    assert (recorded.id, recorded.outcome, recorded.job_id) == (submission.request_id, "cached", job.id)
    assert Job.objects.count() == 1


def test_no_cache_skips_the_lookup():
    job = Job.objects.create(
        hash="x", query="q", normalized_query="q", state=Job.State.COMPLETED, response="old"
    )
    job.hash = services.query_hash(normalized="q", model=None, servers=[])
    job.save()
    services.cache_put(job=job)
    submission = services.query_submit(api_key=None, query="q", no_cache=True)
    assert submission.outcome == "queued" and submission.job_id != job.id
    assert Job.objects.get(id=submission.job_id).use_cache is False


def test_cache_disabled_skips_the_lookup(settings):
    job = Job.objects.create(hash="x", query="q", normalized_query="q", state=Job.State.COMPLETED)
    job.hash = services.query_hash(normalized="q", model=None, servers=[])
    job.save()
    services.cache_put(job=job)
    settings.CACHE_ENABLED = False
    assert services.query_submit(api_key=None, query="q").outcome == "queued"


def test_a_cache_entry_naming_a_missing_job_is_ignored_when_written_in_the_request(settings):
    settings.CACHE_HIT_JOURNAL = False
    digest = services.query_hash(normalized="q", model=None, servers=[])
    redis_client().set(f"claude:{digest}", '{"jobId": "5f0c7d5e-0000-4000-8000-000000000000", "result": {}}')
    assert services.query_submit(api_key=None, query="q").outcome == "queued"


def test_a_cache_entry_naming_a_missing_job_is_dropped_by_the_recorder():
    """A job removed behind Django's back (raw SQL, a restored database): its entry serves until recorded."""
    digest = services.query_hash(normalized="q", model=None, servers=[])
    redis_client().set(f"claude:{digest}", '{"jobId": "5f0c7d5e-0000-4000-8000-000000000000", "result": {}}')
    assert services.query_submit(api_key=None, query="q").outcome == "cached"
    assert journal.journal_drain() == 1
    assert QueryRequest.objects.count() == 0
    assert redis_client().get(f"claude:{digest}") is None
    assert services.query_submit(api_key=None, query="q").outcome == "queued"


def test_deleting_a_job_drops_its_cache_entry():
    job = Job.objects.create(
        hash="x", query="q", normalized_query="q", state=Job.State.COMPLETED, response="A"
    )
    job.hash = services.query_hash(normalized="q", model=None, servers=[])
    job.save()
    services.cache_put(job=job)
    job.delete()
    assert services.cache_get(query_hash=job.hash) is None
    assert services.query_submit(api_key=None, query="q").outcome == "queued"


def test_redis_down_at_submit_is_a_503_and_records_nothing_half_done(client, settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        }
    }
    # Changing CACHES through the settings fixture resets Django's cache handler (setting_changed).
    response = client.post("/api/query", {"query": "x"}, format="json")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "overloaded_error"
    assert Job.objects.count() == 0


def test_an_answer_cached_between_lookup_and_claim_is_served_without_a_new_job(monkeypatch):
    """The previous job cached its answer and released its mark after our first cache lookup."""
    done = Job.objects.create(
        hash="x", query="q", normalized_query="q", state=Job.State.COMPLETED, response="A"
    )
    done.hash = services.query_hash(normalized="q", model=None, servers=[])
    done.save()
    real_lookup = submit._submit_from_cache
    lookups = []

    def lookup_racing(**kwargs):
        lookups.append(1)
        if len(lookups) == 1:
            services.cache_put(job=done)  # lands just after the first lookup missed
            return None
        return real_lookup(**kwargs)

    monkeypatch.setattr(submit, "_submit_from_cache", lookup_racing)
    submission = services.query_submit(api_key=None, query="q")
    assert submission.outcome == "cached" and submission.job_id == done.id
    assert Job.objects.count() == 1
    assert redis_client().get(f"dedup:{done.hash}") is None
