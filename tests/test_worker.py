"""The worker side of the pipeline, run in-process with rq's SimpleWorker.

The fake CLI stands in where the real one cannot be made to misbehave on demand; the real CLI's
paths are in test_e2e.py.
"""

import json

import pytest

from core.redis import redis_client
from queries import services
from queries.models import Job
from tests.support.pipeline import run_queued_jobs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_db")]


def submit(query: str = "What is 2+2?", **kwargs) -> services.Submission:
    return services.query_submit(api_key=None, query=query, **kwargs)


def test_success_is_stored_cached_and_the_mark_cleared(fake_claude, tmp_path, settings):
    argv_file = tmp_path / "argv.json"
    fake_claude("ok", FAKE_CLAUDE_ARGV_FILE=str(argv_file))
    submission = submit("Hello there", model="sonnet")
    assert run_queued_jobs() == 1

    job = Job.objects.get(id=submission.job_id)
    assert job.state == Job.State.COMPLETED and job.progress == 100
    assert job.started_at and job.finished_at and job.cli_pid
    assert job.error_type == "" and job.exit_code == 0
    result = job.result_payload()
    assert result["response"] == "Hello there"  # sent verbatim, not normalized
    assert result["intent"] == "general" and result["mcpServers"] == []
    assert result["costUsd"] is not None and result["usage"]["inputTokens"] is not None
    assert job.cli_output["type"] == "result"

    argv = json.loads(argv_file.read_text())
    assert "Hello there" not in " ".join(argv)  # the prompt went to stdin
    assert argv[argv.index("--model") + 1] == "sonnet"

    redis = redis_client()
    assert redis.get(f"dedup:{job.hash}") is None
    cached = json.loads(redis.get(f"claude:{job.hash}"))
    assert cached == {"jobId": str(job.id), "result": result}
    assert 0 < redis.ttl(f"claude:{job.hash}") <= settings.CACHE_TTL


def test_identical_query_after_completion_is_a_cache_hit_without_a_run(fake_claude):
    fake_claude("ok")
    first = submit("What is 2+2?")
    run_queued_jobs()
    second = submit("  WHAT is   2+2? ")
    assert second.outcome == "cached" and second.job_id == first.job_id
    assert second.result["response"] == Job.objects.get(id=first.job_id).response
    assert Job.objects.count() == 1
    assert run_queued_jobs() == 0


@pytest.mark.parametrize(
    ("mode", "error_type", "text"),
    [
        ("is_error", "cli_error", "Not logged in"),
        ("exit2", "cli_error", "exit"),
        ("garbage", "cli_output_invalid", ""),
    ],
)
def test_cli_failures_fail_the_job_uncached_with_the_mark_cleared(fake_claude, mode, error_type, text):
    fake_claude(mode)
    submission = submit()
    run_queued_jobs()
    job = Job.objects.get(id=submission.job_id)
    assert job.state == Job.State.FAILED and job.progress == 100 and job.finished_at
    assert job.error_type == error_type
    assert text.lower() in job.error_message.lower()
    assert job.result_payload() is None and job.error_payload()["type"] == error_type
    assert redis_client().get(f"claude:{job.hash}") is None
    assert redis_client().get(f"dedup:{job.hash}") is None
    # A failed answer is never served again: the same query makes a new job.
    assert submit().outcome == "queued"


def test_timeout_fails_the_job_with_cli_timeout(fake_claude, settings):
    settings.CLAUDE_TIMEOUT = 1.0
    settings.CLAUDE_KILL_GRACE = 0.5
    fake_claude("hang")
    submission = submit()
    run_queued_jobs()
    job = Job.objects.get(id=submission.job_id)
    assert job.state == Job.State.FAILED and job.error_type == "cli_timeout"
    assert redis_client().get(f"dedup:{job.hash}") is None


def test_missing_binary_is_cli_not_found(settings, tmp_path):
    settings.CLAUDE_BIN = str(tmp_path / "no-such-claude")
    settings.CLAUDE_WORKDIR = tmp_path / "workdir"
    submission = submit()
    run_queued_jobs()
    job = Job.objects.get(id=submission.job_id)
    assert job.state == Job.State.FAILED and job.error_type == "cli_not_found"
    assert "no-such-claude" in job.error_message


def test_a_job_is_claimed_once(fake_claude):
    fake_claude("ok")
    submission = submit()
    Job.objects.filter(id=submission.job_id).update(state=Job.State.RUNNING)
    assert services.job_run(job_id=submission.job_id) is None
    assert Job.objects.get(id=submission.job_id).state == Job.State.RUNNING


def test_a_queued_job_whose_answer_arrived_meanwhile_reuses_it(fake_claude, settings, tmp_path):
    settings.DEDUP_ENABLED = False
    argv_file = tmp_path / "argv.json"
    fake_claude("ok", FAKE_CLAUDE_ARGV_FILE=str(argv_file))
    first, second = submit(), submit()
    assert first.job_id != second.job_id
    run_queued_jobs()
    jobs = {j.id: j for j in Job.objects.all()}
    assert jobs[first.job_id].served_from_cache is False
    assert jobs[second.job_id].served_from_cache is True
    assert jobs[second.job_id].response == jobs[first.job_id].response
    assert jobs[second.job_id].state == Job.State.COMPLETED


def test_no_cache_job_runs_the_cli_and_still_stores_its_answer(fake_claude):
    fake_claude("ok")
    first = submit()
    run_queued_jobs()
    second = submit(no_cache=True)
    run_queued_jobs()
    job = Job.objects.get(id=second.job_id)
    assert job.served_from_cache is False and job.state == Job.State.COMPLETED
    assert json.loads(redis_client().get(f"claude:{job.hash}"))["jobId"] == str(job.id)
    assert first.job_id != second.job_id


def test_cache_disabled_stores_nothing_in_the_cache(fake_claude, settings):
    settings.CACHE_ENABLED = False
    fake_claude("ok")
    submission = submit()
    run_queued_jobs()
    job = Job.objects.get(id=submission.job_id)
    assert job.state == Job.State.COMPLETED
    assert redis_client().get(f"claude:{job.hash}") is None


def test_priorities_are_taken_high_first(fake_claude):
    fake_claude("ok")
    low = submit("low one", priority="low")
    normal = submit("normal one")
    high = submit("high one", priority="high")
    run_queued_jobs()
    started = {j.id: j.started_at for j in Job.objects.all()}
    assert started[high.job_id] < started[normal.job_id] < started[low.job_id]
