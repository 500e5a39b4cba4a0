"""Which keys the warm CLI pool keeps warm: the system prompt given at claim time, and the keys every
worker's jobs used shared through Redis, so /v1/ calls (which always name a model) run warm."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import django_rq
import pytest
from rq.job import Job as RqJob

from claude_cli import runner
from claude_cli.invocation import ClaudeInvocation, RunnerConfig, warm_input, warm_key
from claude_cli.pool import CliPool
from claude_cli.streamjson import StreamJsonParser
from claude_cli.warm import start_warm
from core.redis import redis_client
from queries import pool
from queries.models import Job
from tests.support.processes import FAKE_CLAUDE
from tests.support.v1 import MODEL, anthropic_client, openai_client, system_text, user
from tests.support.waiting import wait_for
from tests.test_pool import real_config, scrape, warm_children

pytestmark = pytest.mark.timeout(180)

SYSTEM = 'You are Quill: terse, "quoted", ünïcode.\nSecond line.'


def after_billing(body: dict[str, Any]) -> str:
    """The system prompt upstream got, without the CLI's first line (a hash of the message)."""
    return system_text(body).split("\n", 1)[1]


# --- the system prompt at claim time -----------------------------------------------------------------


def test_a_system_prompt_is_not_part_of_the_warm_key_but_goes_to_stdin_first():
    config = RunnerConfig(binary="claude", timeout=5)
    plain = ClaudeInvocation(prompt="q", model="opus")
    with_system = ClaudeInvocation(prompt="q", model="opus", system_prompt=SYSTEM)
    assert warm_key(with_system, config) == warm_key(plain, config)
    assert warm_input(plain) == plain.user_message_line()
    first, second = warm_input(with_system).decode().splitlines()
    assert json.loads(first) == {
        "type": "control_request",
        "request_id": "gateway-system-prompt",
        "request": {"subtype": "initialize", "systemPrompt": SYSTEM},
    }
    assert json.loads(second) == json.loads(plain.user_message_line())


def test_the_answer_to_the_system_prompt_is_not_taken_for_output():
    parser = StreamJsonParser(max_line_bytes=1 << 20)
    parser.feed(b'{"type": "control_response", "response": {"subtype": "success"}}\n')
    assert parser.last_object is None and parser.result is None


@pytest.mark.e2e
def test_the_real_cli_warm_sends_upstream_the_system_prompt_a_cold_run_sends(mock, tmp_path):
    """The CLI reads --system-prompt-file once, at start-up: a warm one gets it as a control request."""
    config = real_config(mock, tmp_path)
    invocation = ClaudeInvocation(prompt="[[mock:text=terse]] hello", model=MODEL, system_prompt=SYSTEM)
    cold = runner.run_claude(invocation, config)
    warm = start_warm(invocation, config)
    assert warm.key == warm_key(ClaudeInvocation(prompt="", model=MODEL), config)
    assert b"--system-prompt" not in Path(f"/proc/{warm.pid}/cmdline").read_bytes()
    hot = runner.run_claude(invocation, config, warm=warm)
    assert cold.ok and hot.ok, (cold.error_message, hot.error_message)
    assert hot.data["result"] == cold.data["result"] == "terse"
    cold_body, warm_body = mock.message_requests()
    assert SYSTEM in system_text(cold_body)
    assert warm_body["system"] == cold_body["system"]
    # The same request but for the session it belongs to.
    assert {k for k in cold_body.keys() | warm_body.keys() if cold_body.get(k) != warm_body.get(k)} <= {
        "metadata"
    }


# --- keys shared by the workers ------------------------------------------------------------------------


def fake_pool(tmp_path: Path, name: str) -> CliPool:
    config = RunnerConfig(
        binary=str(FAKE_CLAUDE),
        timeout=10.0,
        kill_grace=1.0,
        workdir=tmp_path / name,
        env={**os.environ, "FAKE_CLAUDE_MODE": "ok"},
    )
    return CliPool(config=config, size=1, max_age=60, max_keys=3)


@pytest.mark.django_db(transaction=True)
def test_a_key_one_workers_job_used_is_kept_warm_by_every_worker(tmp_path, settings, redis_db):
    from queries.worker import GatewayInProcessWorker

    queues = [django_rq.get_queue(name) for name in settings.RQ_QUEUE_NAMES]
    workers = [GatewayInProcessWorker(queues, connection=queues[0].connection) for _ in range(2)]
    pools = [fake_pool(tmp_path, "a"), fake_pool(tmp_path, "b")]
    try:
        for worker, cli_pool in zip(workers, pools, strict=True):
            worker._cli_pool = cli_pool
            cli_pool.want(pool.DEFAULT_DESCRIPTOR)
            assert worker.dequeue_job_and_maintain_ttl(timeout=1, max_idle_time=1) is None
        assert [len(p.idle()) for p in pools] == [1, 1]
        assert workers[0].dequeue_timeout == 1  # an idle worker looks for new keys every second

        rq_job = RqJob.create(
            pool.RUN_JOB, args=["a-job"], meta=pool.job_meta(model=MODEL, servers=[]), connection=redis_db
        )
        with workers[0].cli_pool_job(rq_job):
            pass  # the job found no warm CLI for its model (a miss) and recorded the key
        assert pool.pool_demand(redis=redis_client(), max_age=60)[0][0] == (MODEL, ())

        workers[1]._cli_pool_polled = 0.0  # as a second later
        assert workers[1]._cli_pool_due()
        assert workers[1].dequeue_job_and_maintain_ttl(timeout=1, max_idle_time=1) is None
        assert len(pools[1].idle((MODEL, ()))) == 1 and len(pools[1].idle()) == 2
    finally:
        for cli_pool in pools:
            cli_pool.close()


def test_the_shared_keys_are_bounded_and_expire(redis_db):
    redis = redis_client()
    for model in ("a", "b", "c", "d"):
        pool.pool_demand_record(redis=redis, descriptor=(model, ()), max_keys=3, max_age=60)
        time.sleep(0.01)
    assert [d for d, _ in pool.pool_demand(redis=redis, max_age=60)] == [("d", ()), ("c", ()), ("b", ())]
    assert 0 < redis.ttl(pool.WANTED_KEY) <= 60
    redis.zadd(pool.WANTED_KEY, {json.dumps(["old", []]): time.time() - 120, "not json": time.time()})
    assert ("old", ()) not in [d for d, _ in pool.pool_demand(redis=redis, max_age=60)]


def test_a_key_whose_servers_cannot_be_had_is_tried_again_later_not_each_second(tmp_path):
    calls: list[Any] = []

    def unavailable(descriptor: Any) -> None:
        calls.append(descriptor)
        return None

    cli_pool = CliPool(
        config=RunnerConfig(binary=str(FAKE_CLAUDE), timeout=5),
        size=1,
        max_age=60,
        max_keys=2,
        invocation_for=unavailable,
    )
    cli_pool.want((None, ("gone",)))
    assert cli_pool.fill() == 0 and not cli_pool.short()
    assert cli_pool.want((None, ("gone",))) is False  # still known: not new
    cli_pool.fill()
    assert calls == [(None, ("gone",))]


# --- end to end: gunicorn, two rq workers, the real CLI ---------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_second_v1_call_of_a_model_and_system_prompt_is_served_by_a_warm_cli(
    web_server, api_key, worker_process, mock
):
    """Whichever worker takes the second call, it has a warm CLI for the model the first one named."""
    workers = [worker_process(), worker_process()]
    for worker in workers:
        wait_for(lambda w=worker: warm_children(w.pid), timeout=60, message="a warm CLI in each worker")
    claude = anthropic_client(web_server, api_key[1])

    first = claude.messages.create(
        model=MODEL, max_tokens=64, system=SYSTEM, messages=user("[[mock:text=one]] first")
    )
    assert first.content[0].text == "one"
    # Both workers keep the model's key warm beside the default one, once no CLI is answering.
    for worker in workers:
        wait_for(
            lambda w=worker: len(warm_children(w.pid)) == 2,
            timeout=60,
            message="a warm CLI for the model in each worker",
        )
    warm_pids = {pid for worker in workers for pid in warm_children(worker.pid)}

    with claude.messages.stream(
        model=MODEL, max_tokens=64, system=SYSTEM, messages=user("[[mock:text=two]] second")
    ) as stream:
        second = stream.get_final_message()
    assert second.content[0].text == "two"
    jobs = list(Job.objects.order_by("created_at"))
    assert jobs[1].cli_pid in warm_pids
    bodies = mock.message_requests()
    assert SYSTEM in system_text(bodies[0]) and after_billing(bodies[1]) == after_billing(bodies[0])
    http = type("Http", (), {"base": web_server})
    assert scrape(http, "claude_cli_pool_misses_total") == 1
    assert scrape(http, "claude_cli_pool_hits_total") == 1

    # The OpenAI API's calls with the same model and system message take the same warm CLIs.
    for worker in workers:
        wait_for(lambda w=worker: len(warm_children(w.pid)) == 2, timeout=60, message="the replacement")
    chat = openai_client(web_server, api_key[1])
    chunks = chat.chat.completions.create(
        model=MODEL,
        stream=True,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "[[mock:text=3]] x"}],
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "3"
    assert scrape(http, "claude_cli_pool_hits_total") == 2
    assert after_billing(mock.message_requests()[2]) == after_billing(bodies[0])
