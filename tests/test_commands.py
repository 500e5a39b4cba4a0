"""Every operator command: what it does, and that it fails with a message and a non-zero exit.

``call_command`` shows the CommandError a failure raises; a few runs as a real process show the exit
status and the message an operator sees (``manage.py`` prints ``CommandError: ...`` and exits 1).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from redis.exceptions import ConnectionError as RedisConnectionError

from core.redis import redis_client
from queries import services
from queries.models import ApiKey, Job
from queries.services import operations
from tests.support import REPO
from tests.support.factories import JobFactory, failed_job
from tests.support.pipeline import (
    OTHER_KEYS,
    QUESTION,
    plain_hash,
    run_queued_jobs,
    seed_cache,
    seed_other_keys,
)
from tests.support.processes import database_url, start_web_server

# Transactional: django-rq enqueues when the transaction commits, and worker processes read the rows.
pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``manage.py`` as an operator runs it, against the test database."""
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        **env,
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


DEAD_REDIS = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    "command",
    [
        "gateway_query",
        "purge_cache",
        "retry_failed",
        "cancel_job",
        "create_api_key",
        "check_claude",
        "reconcile",
        "gateway_stats",
    ],
)
def test_every_command_explains_itself(command):
    result = manage(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: manage.py {command}" in result.stdout and len(result.stdout) > 300


# --- create_api_key ------------------------------------------------------------------------------------


def test_create_api_key_prints_the_key_alone_on_the_last_line(redis_db):
    out, err = run("create_api_key", "deploy-bot")
    key = out.strip().splitlines()[-1]
    assert ApiKey.objects.get(name="deploy-bot").key_hash == ApiKey.hash_key(key)
    assert "not shown again" in err


def test_create_api_key_refuses_a_blank_name():
    with pytest.raises(CommandError, match="needs a name"):
        run("create_api_key", "   ")
    assert not ApiKey.objects.exists()


# --- gateway_query -------------------------------------------------------------------------------------


def test_gateway_query_prints_a_cached_answer_at_once(redis_db):
    services.cache_put(job=JobFactory(hash=plain_hash(), response="four"))
    out, err = run("gateway_query", "  what is 2+2?")
    assert out.strip() == "four" and ": cached, job" in err


def test_gateway_query_without_wait_prints_the_job_id_and_queues_it(redis_db):
    out, err = run("gateway_query", QUESTION, "--priority", "high")
    job = Job.objects.get(id=out.strip())
    assert job.priority == "high" and job.state == Job.State.QUEUED
    assert ": queued, job" in err


@pytest.mark.e2e
def test_gateway_query_waits_for_a_real_worker_and_the_real_cli(worker_process):
    worker_process()
    out, _ = run("gateway_query", QUESTION, "--wait", "--timeout", "60")
    assert out.strip() == "4"
    with pytest.raises(CommandError, match=r"failed: cli_error: .*400"):
        run("gateway_query", "[[mock:error=400]] hello", "--wait", "--timeout", "60")


def test_gateway_query_wait_gives_up_with_a_hint_when_no_worker_runs(redis_db):
    with pytest.raises(CommandError, match=r"still queued after 0.5 s. Is a worker running"):
        run("gateway_query", QUESTION, "--wait", "--timeout", "0.5")


def test_gateway_query_refuses_a_blank_query_with_a_non_zero_exit():
    result = manage("gateway_query", "   ")
    assert result.returncode == 1
    assert "CommandError: The query is blank." in result.stderr
    assert "Traceback" not in result.stderr


# --- purge_cache ---------------------------------------------------------------------------------------


def test_purge_cache_all_deletes_cached_answers_only(redis_db):
    seed_cache(7)
    seed_other_keys()
    out, _ = run("purge_cache", "--all")
    assert out.strip() == "Purged 7 cached answer(s)."
    assert list(redis_client().scan_iter(match="claude:*")) == []
    assert all(redis_client().get(key) == b"keep" for key in OTHER_KEYS)


def test_purge_cache_by_hash_and_its_failures(redis_db):
    hashes = seed_cache(2)
    out, _ = run("purge_cache", "--hash", hashes[0])
    assert out.strip() == f"Purged the cached answer of {hashes[0]}."
    assert redis_client().exists(f"claude:{hashes[1]}")
    with pytest.raises(CommandError, match="No cached answer"):
        run("purge_cache", "--hash", hashes[0])
    with pytest.raises(CommandError, match="not a query hash"):
        run("purge_cache", "--hash", "claude:*")
    with pytest.raises(CommandError, match="one of the arguments --all --hash is required"):
        run("purge_cache")


def test_purge_cache_reports_redis_down_cleanly():
    result = manage("purge_cache", "--all", REDIS_URL=DEAD_REDIS)
    assert result.returncode == 1
    assert "CommandError: Redis is unavailable" in result.stderr and "Traceback" not in result.stderr


# --- retry_failed --------------------------------------------------------------------------------------


def test_retry_failed_retries_failures_within_the_window(real_claude, redis_db):
    recent = failed_job(query=QUESTION, hash=plain_hash(), finished_at=timezone.now() - timedelta(minutes=20))
    failed_job(finished_at=timezone.now() - timedelta(hours=5))
    out, _ = run("retry_failed", "--since", "30m")
    [retry] = recent.retries.all()
    assert out.strip() == f"{recent.id} (worker_lost) → retried as {retry.id}"
    run_queued_jobs()
    retry.refresh_from_db()
    assert retry.state == Job.State.COMPLETED and retry.response == "4"
    out, _ = run("retry_failed", "--since", "30m")
    assert out.strip() == "No failed jobs to retry."


def test_retry_failed_refuses_a_bad_duration():
    with pytest.raises(CommandError, match="not a duration"):
        run("retry_failed", "--since", "yesterday")


def test_retry_failed_exits_non_zero_when_a_retry_cannot_be_queued(monkeypatch, redis_db):
    failed_job()

    def refuse(*, job: Job) -> None:
        raise RedisConnectionError("connection refused")

    monkeypatch.setattr(operations, "job_enqueue", refuse)
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="1 of 1 failed job"):
        call_command("retry_failed", stdout=out, stderr=err)
    assert "The queue is unavailable" in err.getvalue()


# --- cancel_job ----------------------------------------------------------------------------------------


def test_cancel_job_cancels_a_queued_job(redis_db):
    job_id = services.query_submit(api_key=None, query=QUESTION).job_id
    out, _ = run("cancel_job", str(job_id))
    assert out.strip() == f"Job {job_id} cancelled."
    assert Job.objects.get(id=job_id).state == Job.State.CANCELLED


def test_cancel_job_failures(redis_db):
    with pytest.raises(CommandError, match="No job"):
        run("cancel_job", "00000000-0000-0000-0000-000000000000")
    with pytest.raises(CommandError, match="No job"):
        run("cancel_job", "nonsense")
    done = JobFactory()
    with pytest.raises(CommandError, match="is completed: only queued or running"):
        run("cancel_job", str(done.id))
    # Running, but no worker is there to stop it: the command says so instead of claiming success.
    orphan = JobFactory(state=Job.State.RUNNING, finished_at=None, started_at=timezone.now())
    with pytest.raises(CommandError, match="still running after 0.5 s: is its worker alive"):
        run("cancel_job", str(orphan.id), "--wait", "0.5")


# --- check_claude --------------------------------------------------------------------------------------


def test_check_claude_runs_a_real_prompt_through_the_real_cli(real_claude):
    out, _ = run("check_claude")
    assert "binary:   " in out and "node_modules" in out
    assert "version:  2." in out and "breaker:  closed" in out
    assert f"endpoint: {real_claude.url} (ANTHROPIC_BASE_URL)" in out
    assert "account:  ANTHROPIC_API_KEY ****" in out and "sk-test-mock" not in out  # too short to hint
    assert "answer:   echo: Reply with the single word: ok" in out  # the mock echoes what it was asked
    assert out.strip().endswith("Claude CLI OK")
    assert len(real_claude.message_requests()) == 1


@pytest.mark.e2e
def test_check_claude_and_ready_find_the_pinned_cli_from_a_plain_shell(mock, tmp_path, processes, redis_db):
    """Outside scripts/serve nothing puts node_tools/ on PATH: both still find the same CLI."""
    plain = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "CLAUDE_BIN": "",
        "HOME": str(tmp_path),
        "ANTHROPIC_BASE_URL": mock.url,
        "ANTHROPIC_API_KEY": "sk-ant-api03-abcdefghijklmnop-wxyz",
        "CLAUDE_WORKDIR": str(tmp_path / "workdir"),
    }
    result = manage("check_claude", "--timeout", "60", **plain)
    assert result.returncode == 0, result.stdout + result.stderr
    pinned = str(REPO / "node_tools" / "node_modules" / ".bin" / "claude")
    assert f"binary:   {pinned} (the pinned CLI in node_tools/)" in result.stdout
    assert f"endpoint: {mock.url} (ANTHROPIC_BASE_URL)" in result.stdout
    assert "account:  ANTHROPIC_API_KEY sk-ant-…wxyz" in result.stdout
    assert "abcdefghijklmnop" not in result.stdout + result.stderr

    url = start_web_server(processes, mock, tmp_path, **plain)
    claude = requests.get(f"{url}/ready", timeout=30).json()["components"]["claude"]
    assert claude["status"] == "ok" and claude["path"] == pinned, claude


def test_check_claude_reports_the_real_cli_not_logged_in(real_claude, monkeypatch, tmp_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.delenv("ANTHROPIC_BASE_URL")
    (tmp_path / "empty-home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    with pytest.raises(CommandError, match=r"did not answer \(cli_error\).*Not logged in"):
        run("check_claude", "--timeout", "30")


def test_check_claude_shows_an_open_breaker(real_claude, settings):
    from claude_cli.upstream import UpstreamFailure
    from queries.services import breaker

    settings.BREAKER_THRESHOLD = 1
    breaker.breaker_failure(UpstreamFailure("overloaded", 529, "overloaded"))
    try:
        out, _ = run("check_claude")
    finally:
        breaker.breaker_success()
    assert re.search(r"breaker:  open \(overloaded open for \d+ s: the upstream is overloaded", out), out


def test_check_claude_reports_an_upstream_401_as_not_authorised_in_seconds(real_claude):
    started = time.monotonic()
    with pytest.raises(CommandError, match=r"did not answer \(upstream_auth\).*not authorised.*HTTP 401"):
        run("check_claude", "--prompt", "[[mock:error=401]] ok")
    assert time.monotonic() - started < 10


def test_check_claude_reports_a_missing_binary(settings, tmp_path):
    settings.CLAUDE_BIN = str(tmp_path / "no-such-claude")
    result = manage("check_claude", CLAUDE_BIN=str(tmp_path / "no-such-claude"))
    assert result.returncode == 1
    assert "was not found on PATH or in node_tools/" in result.stderr and "Traceback" not in result.stderr


# --- reconcile and gateway_stats -----------------------------------------------------------------------


def test_reconcile_and_gateway_stats_fail_cleanly_without_redis():
    # An orphaned job makes reconcile ask Redis which workers are alive.
    JobFactory(state=Job.State.RUNNING, finished_at=None, started_at=timezone.now() - timedelta(hours=1))
    for command in ("reconcile", "gateway_stats"):
        result = manage(command, REDIS_URL=DEAD_REDIS)
        assert result.returncode == 1, command
        assert "CommandError: Redis is unavailable" in result.stderr, (command, result.stderr[-2000:])
        assert "Traceback" not in result.stderr


def test_reconcile_reports_an_orphaned_job(redis_db):
    orphan = JobFactory(
        state=Job.State.RUNNING,
        finished_at=None,
        started_at=timezone.now() - timedelta(minutes=2),
        worker_name="vanished-host:99",
    )
    out, _ = run("reconcile", "--grace", "30")
    assert f"job {orphan.id}: its worker is gone; failed as worker_lost" in out
    orphan.refresh_from_db()
    assert orphan.state == Job.State.FAILED and orphan.error_type == "worker_lost"
