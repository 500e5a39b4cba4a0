"""The upstream circuit breaker end to end: gunicorn, a real rq worker, the real claude CLI against
the mock Anthropic API in an outage (every request answered 529 or 429, or no upstream to connect
to at all), then its end; refusals on the native API and, through the official SDKs, on /v1/."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import anthropic
import openai
import pytest

from queries.models import Job
from tests.mockapi import MockAnthropic
from tests.support.processes import free_port, group_members
from tests.support.v1 import MODEL, anthropic_client, openai_client, user
from tests.support.waiting import wait_finished, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BREAKER_ENV = {"BREAKER_THRESHOLD": "3", "BREAKER_COOLDOWN": "3"}


def submit(http, query: str):
    return http.post(f"{http.base}/api/query", json={"query": query}, timeout=30)


def submit_running(http) -> tuple[str, int]:
    """Submit the query the breaker will hold; its job id and its CLI's pid once that started."""
    held_id = submit(http, "What is 2+2?").json()["jobId"]
    cli_pid = wait_for(
        lambda: Job.objects.filter(id=held_id).values_list("cli_pid", flat=True).first(),
        timeout=30,
        message="the CLI to start",
    )
    return held_id, cli_pid


def breaker_state(http) -> dict:
    return http.get(f"{http.base}/ready", timeout=30).json()["components"]["upstream"]


@pytest.mark.parametrize(
    ("outage", "kind", "status", "error_type", "v1_status"),
    [(529, "overloaded", 503, "overloaded_error", 529), (429, "rate_limit", 429, "rate_limit_error", 429)],
)
def test_an_outage_opens_the_breaker_holds_the_job_and_refuses_new_ones_until_a_probe_answers(
    http, api_key, worker_process, mock, outage, kind, status, error_type, v1_status
):
    worker_process(env=BREAKER_ENV)
    mock.outage = outage
    held_id, first_cli = submit_running(http)
    # The CLI retries; its third failed request opens the breaker, and the job waits in its queue.
    wait_for(lambda: breaker_state(http)["state"] == "open", timeout=60, message="the breaker to open")
    wait_for(
        lambda: Job.objects.filter(id=held_id, state=Job.State.QUEUED).exclude(rq_job_id=held_id).exists(),
        timeout=30,
        message="the job to be queued again",
    )
    assert group_members(first_cli) == []  # the retrying CLI was stopped
    assert breaker_state(http)["kinds"][kind]["status"] == outage
    upstream_calls = len(mock.message_requests())

    timings = []
    for n in range(20):
        started = time.monotonic()
        refused = submit(http, f"What is 3+{n}?")
        timings.append(time.monotonic() - started)
        assert refused.status_code == status, refused.text
    timings.sort()
    median, slowest = timings[10] * 1000, timings[-1] * 1000
    print(f"open breaker ({outage}): 20 refusals, median {median:.1f} ms, max {slowest:.1f} ms")
    assert timings[-1] < 1.0
    assert refused.json()["error"]["type"] == error_type
    assert refused.json()["error"]["details"]["reason"] == f"upstream_{kind}"
    assert int(refused.headers["Retry-After"]) >= 1
    # The /v1/ APIs refuse in their own shapes, as the official SDKs read them.
    with pytest.raises(anthropic.APIStatusError) as refused_anthropic:
        anthropic_client(http.base, api_key[1]).messages.create(
            model=MODEL, max_tokens=64, messages=user("What is 5+5?")
        )
    assert refused_anthropic.value.status_code == v1_status
    assert refused_anthropic.value.body["error"]["type"] == error_type
    assert int(refused_anthropic.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.APIStatusError) as refused_openai:
        openai_client(http.base, api_key[1]).chat.completions.create(
            model=MODEL, messages=user("What is 6+6?")
        )
    assert refused_openai.value.status_code == v1_status
    assert refused_openai.value.type == ("rate_limit_error" if outage == 429 else "server_error")
    assert int(refused_openai.value.response.headers["retry-after"]) >= 1
    assert Job.objects.count() == 1  # no job, so no CLI, for any refused query
    metrics = http.get(f"{http.base}/metrics", timeout=30).text
    assert f'claude_upstream_breaker_open{{kind="{kind}"}} 1.0' in metrics

    # The outage ends; after the cooldown one probe runs the held job, and its answer closes the breaker.
    mock.outage = None
    body = wait_finished(http, held_id, timeout=90)
    assert body["state"] == "completed" and body["result"]["response"] == "4", body
    assert breaker_state(http)["state"] == "closed"
    assert len(mock.message_requests()) > upstream_calls

    again = submit(http, "What is 3+3?")
    assert again.status_code == 202, again.text
    assert wait_finished(http, again.json()["jobId"])["state"] == "completed"


class DroppingUpstream:
    """A listener on 127.0.0.1 that accepts every connection and closes it unanswered."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()  # with a zero linger: a reset, as a dropped connection

    def close(self) -> None:
        # A shutdown wakes the accept() blocked in the thread: only then is the port free again.
        self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def upstream_port() -> Iterator[int]:
    yield free_port()


@pytest.mark.parametrize("failure", ["refused", "dropped"])
def test_an_unreachable_upstream_opens_the_network_breaker_and_the_held_job_runs_once_it_is_back(
    http, worker_process, upstream_port, failure
):
    # The CLI's upstream is an address where nothing listens, or where every connection is reset.
    dropping = DroppingUpstream(upstream_port) if failure == "dropped" else None
    upstream = f"http://127.0.0.1:{upstream_port}"
    # A longer cooldown than the others: the CLI waits longer between retries of a failed connection.
    env = {"BREAKER_THRESHOLD": "3", "BREAKER_COOLDOWN": "10", "ANTHROPIC_BASE_URL": upstream}
    worker_process(env={**env, "CLAUDE_POOL_SIZE": "0"})
    back: MockAnthropic | None = None
    try:
        held_id, first_cli = submit_running(http)
        # The CLI reports each failed connection and retries; the third opens the network breaker.
        wait_for(lambda: breaker_state(http)["state"] == "open", timeout=90, message="the breaker to open")
        network = breaker_state(http)["kinds"]["network"]
        assert network["state"] == "open" and network["status"] is None, network
        assert "could not be reached" in network["message"]
        requeued = Job.objects.filter(id=held_id, state=Job.State.QUEUED).exclude(rq_job_id=held_id)
        wait_for(requeued.exists, timeout=30, message="the job to be queued again")
        wait_for(lambda: group_members(first_cli) == [], timeout=10, message="the retrying CLI to be stopped")
        if dropping is not None:
            assert dropping.accepted >= 3

        timings = []
        for n in range(20):
            started = time.monotonic()
            refused = submit(http, f"What is 3+{n}?")
            timings.append(time.monotonic() - started)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["type"] == "overloaded_error"
            assert refused.json()["error"]["details"]["reason"] == "upstream_network"
            assert int(refused.headers["Retry-After"]) >= 1
        timings.sort()
        print(
            f"open breaker (network, {failure}): 20 refusals, "
            f"median {timings[10] * 1000:.1f} ms, max {timings[-1] * 1000:.1f} ms"
        )
        assert Job.objects.count() == 1  # no job, so no CLI, for any refused query
        metrics = http.get(f"{http.base}/metrics", timeout=30).text
        assert 'claude_upstream_breaker_open{kind="network"} 1.0' in metrics

        # The upstream comes back on the same address: after the cooldown the probe's answer closes it.
        if dropping is not None:
            dropping.close()
            dropping = None
        back = MockAnthropic(port=upstream_port).start()
        body = wait_finished(http, held_id, timeout=90)
        assert body["state"] == "completed" and body["result"]["response"] == "4", body
        assert breaker_state(http)["state"] == "closed"
        assert back.message_requests()
    finally:
        if dropping is not None:
            dropping.close()
        if back is not None:
            back.stop()
