"""The answer is taken from the CLI's result line, before the CLI exits.

The CLI prints its result, then saves its session, stops its MCP servers and exits: tens of
milliseconds in which the client has nothing to wait for. The runner offers a successful result to
``on_answer`` while the CLI still runs (the fake CLI's "linger" mode exits only when told); the
worker records it once the session file holds the whole turn, so a continuation sent at once
resumes it. End to end, the real CLI runs under a wrapper that stays two seconds after it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from claude_cli import runner
from claude_cli import sessions as cli_sessions
from claude_cli.invocation import ClaudeInvocation, ClaudeOutcome
from claude_cli.process import process_alive
from claude_cli.runner import run_claude
from queries.models import Job, Session
from tests.support.processes import NODE_BIN
from tests.support.waiting import wait_finished, wait_for
from tests.test_runner import fake_config

LINGER = 1.5


def run_lingering(tmp_path: Path, on_answer, **env: str) -> ClaudeOutcome:
    config = fake_config(tmp_path, "linger", extra_env=env)
    return run_claude(ClaudeInvocation(prompt="What is 2+2?"), config, on_answer=on_answer)


def test_the_answer_is_offered_while_the_cli_still_runs_and_the_run_ends_at_its_exit(tmp_path):
    offered: list[tuple[ClaudeOutcome, bool, float]] = []
    started = time.monotonic()

    def on_answer(outcome: ClaudeOutcome) -> bool:
        offered.append((outcome, process_alive(outcome.pid or 0), time.monotonic() - started))
        return True

    outcome = run_lingering(tmp_path, on_answer, FAKE_CLAUDE_LINGER=str(LINGER))

    assert len(offered) == 1
    answer, alive, at = offered[0]
    assert answer.ok and answer.exit_code == 0 and answer.data["result"] == "What is 2+2?"
    assert alive and at < LINGER
    # The run itself still ends when the CLI exits, with the CLI's own exit status.
    assert outcome.ok and outcome.exit_code == 0 and outcome.duration >= LINGER
    assert outcome.pid == answer.pid


def test_an_answered_cli_that_exits_badly_is_a_failed_run_all_the_same(tmp_path):
    offered: list[ClaudeOutcome] = []
    outcome = run_lingering(
        tmp_path, lambda o: offered.append(o) or True, FAKE_CLAUDE_LINGER="0.3", FAKE_CLAUDE_EXIT="3"
    )

    assert [o.ok for o in offered] == [True]
    assert not outcome.ok and outcome.exit_code == 3 and outcome.error_type == "cli_error"


def test_an_answered_cli_that_does_not_exit_is_stopped_after_a_short_grace(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_ANSWERED_EXIT_TIMEOUT", 0.5)
    cancels: list[float] = []
    config = fake_config(tmp_path, "linger")  # never exits by itself
    started = time.monotonic()

    outcome = run_claude(
        ClaudeInvocation(prompt="hi"),
        config,
        on_answer=lambda o: True,
        should_cancel=lambda: bool(cancels.append(time.monotonic())),
    )

    elapsed = time.monotonic() - started
    assert not outcome.ok and outcome.error_type == "cli_timeout"
    assert "of its answer" in outcome.error_message
    # Well before the run's own timeout (10 s), and no cancellation asked about after the answer.
    assert elapsed < 3.0
    assert not process_alive(outcome.pid or 0)
    assert len(cancels) <= 1


def test_a_declined_answer_leaves_the_run_as_before(tmp_path):
    offered: list[ClaudeOutcome] = []
    outcome = run_lingering(tmp_path, lambda o: offered.append(o) or False, FAKE_CLAUDE_LINGER="0.3")

    assert len(offered) == 1
    assert outcome.ok and outcome.duration >= 0.3


@pytest.mark.parametrize("mode", ["is_error", "garbage", "exit2"])
def test_a_failed_run_offers_no_answer(tmp_path, mode):
    offered: list[ClaudeOutcome] = []
    outcome = run_claude(
        ClaudeInvocation(prompt="hi"),
        fake_config(tmp_path, mode),
        on_answer=lambda o: offered.append(o) or True,
    )
    assert not outcome.ok and offered == []


# The job: an answer recorded stays the job's outcome


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("redis_db")
def test_a_job_answered_before_rqs_timeout_stays_completed_when_the_timeout_fires(fake_claude, settings):
    from queries import services
    from tests.support.pipeline import run_queued_jobs

    settings.SESSIONS_ENABLED = False  # the fake CLI writes no session file
    settings.RQ_JOB_TIMEOUT = 2  # fires while the CLI, answered, takes 30 s to exit
    fake_claude("linger", FAKE_CLAUDE_LINGER="30")
    submission = services.query_submit(api_key=None, query="What is 2+2?")
    started = time.monotonic()

    assert run_queued_jobs() == 1

    assert time.monotonic() - started < 15
    job = Job.objects.get(id=submission.job_id)
    assert job.state == Job.State.COMPLETED and job.response == "What is 2+2?" and job.error_type == ""
    assert not process_alive(job.cli_pid)


# The session file: complete once the CLI's closing entry names the turn's last one

SESSION_ID = "3f2b6c1e-0c4a-4d7e-9a51-2b8f0c6d9e10"
USER_LINE = '{"type":"user","uuid":"u-1","message":{"role":"user","content":"hi"}}\n'
ASSISTANT_LINE = '{"type":"assistant","parentUuid":"u-1","uuid":"a-2","message":{"id":"msg_1"}}\n'
CLOSING = {"type": "last-prompt", "lastPrompt": "hi", "leafUuid": "a-2", "sessionId": SESSION_ID}
CLOSING_LINE = json.dumps(CLOSING, separators=(",", ":")) + "\n"


@pytest.mark.parametrize(
    ("content", "settled"),
    [
        (USER_LINE + ASSISTANT_LINE + CLOSING_LINE, True),
        (USER_LINE + ASSISTANT_LINE, False),  # the turn written, not closed yet
        (USER_LINE + ASSISTANT_LINE + CLOSING_LINE[:-20], False),  # the closing line half written
        (USER_LINE + CLOSING_LINE, False),  # it names an entry the file does not hold (yet)
        (USER_LINE + ASSISTANT_LINE + CLOSING_LINE + '{"type":"summary"}\n', False),  # more came after
        ("", False),
    ],
)
def test_a_session_file_is_settled_only_once_it_ends_with_the_closing_entry(tmp_path, content, settled):
    env = {"HOME": str(tmp_path / "home")}
    path = cli_sessions.session_path(session_id=SESSION_ID, workdir=tmp_path, env=env)
    path.parent.mkdir(parents=True)
    path.write_text(content)

    assert cli_sessions.session_settled(session_id=SESSION_ID, workdir=tmp_path, env=env) is settled


def test_no_file_or_no_session_id_is_not_settled(tmp_path):
    env = {"HOME": str(tmp_path / "home")}
    assert not cli_sessions.session_settled(session_id=SESSION_ID, workdir=tmp_path, env=env)
    assert not cli_sessions.session_settled(session_id="../../etc/passwd", workdir=tmp_path, env=env)


# End to end: the real CLI, the worker, the API


def lingering_cli(tmp_path: Path, seconds: float) -> str:
    """The real CLI under a shell that stays ``seconds`` after it exits (the group leader the
    runner follows), with the CLI's exit status."""
    wrapper = tmp_path / "claude-lingering"
    wrapper.write_text(f'#!/bin/sh\n"{NODE_BIN / "claude"}" "$@"\nstatus=$?\nsleep {seconds}\nexit $status\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_client_is_answered_before_the_cli_exits_and_can_continue_at_once(http, worker_process, tmp_path):
    linger = 3.0
    worker_process(claude_bin=lingering_cli(tmp_path, linger))
    started = time.monotonic()
    reply = http.post(
        f"{http.base}/api/query", json={"query": "Name a colour. [[mock:text=Blue.]]"}, timeout=30
    )
    first = wait_finished(http, reply.json()["jobId"], timeout=30)
    answered = time.monotonic() - started

    assert first["state"] == "completed" and first["result"]["response"] == "Blue."
    job = Job.objects.get(id=first["jobId"])
    assert job.exit_code == 0 and job.cli_pid
    # The CLI (its wrapper) is still running, and the session was kept from the file it finished.
    assert process_alive(job.cli_pid), f"answered after {answered:.2f} s, once the CLI had exited"
    session = Session.objects.get(cli_session_id=first["result"]["sessionId"])
    assert b"last-prompt" in bytes(session.content)

    # A continuation sent at once resumes that session (it does not fall back to a transcript).
    reply = http.post(
        f"{http.base}/api/query",
        json={"query": "Why? [[mock:text=The sky.]]", "sessionId": first["result"]["sessionId"]},
        timeout=30,
    )
    second = wait_finished(http, reply.json()["jobId"], timeout=30)
    assert second["state"] == "completed" and second["result"]["response"] == "The sky."
    assert Job.objects.get(id=second["jobId"]).session_mode == "resumed"

    # Once the CLIs have exited, nothing of their sessions is left on the worker's host.
    wait_for(lambda: not process_alive(job.cli_pid), timeout=linger + 10, message="the first CLI to exit")
    wait_for(
        lambda: not list(tmp_path.glob("home*/.claude/projects/*/*.jsonl")),
        timeout=linger + 10,
        message="the session files to be removed",
    )
