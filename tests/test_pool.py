"""The warm CLI pool: CLIs started ahead of time, handed one prompt each, across rq's fork.

The fake CLI stands in where the real one cannot be made to misbehave on demand (a hang, a
grandchild, ignoring SIGTERM); every path is also run with the real CLI against the mock API.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django_rq
import pytest
import requests

from claude_cli import runner
from claude_cli.invocation import STREAM_ARGS, ClaudeInvocation, RunnerConfig, warm_key
from claude_cli.pool import CliPool
from claude_cli.warm import WarmProcess, start_warm
from core.metrics import COUNTERS_KEY
from core.redis import redis_client
from queries import pool, services
from queries.models import Job
from tests.support.processes import FAKE_CLAUDE, group_members, real_claude_bin
from tests.support.waiting import wait_finished, wait_for

pytestmark = pytest.mark.timeout(120)


def fake_config(tmp_path: Path, mode: str = "ok", **env: str) -> RunnerConfig:
    return RunnerConfig(
        binary=str(FAKE_CLAUDE),
        timeout=10.0,
        kill_grace=1.0,
        workdir=tmp_path / "work",
        env={**os.environ, "FAKE_CLAUDE_MODE": mode, **env},
    )


def real_config(mock: Any, tmp_path: Path, *, timeout: float = 30.0) -> RunnerConfig:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": mock.url,
        "ANTHROPIC_API_KEY": "sk-test-mock",
        "HOME": str(home),
    }
    return RunnerConfig(
        binary=real_claude_bin(), timeout=timeout, kill_grace=1.0, workdir=tmp_path / "work", env=env
    )


def gone(pid: int) -> bool:
    """No such process, or a zombie (nothing left running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids (and groups) to kill at teardown if a failing test left them running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# --- the runner with a warm CLI ----------------------------------------------------------------------


def test_a_warm_cli_answers_one_prompt_from_stdin_and_exits(tmp_path):
    argv_file = tmp_path / "argv.json"
    config = fake_config(tmp_path, FAKE_CLAUDE_ARGV_FILE=str(argv_file))
    invocation = ClaudeInvocation(prompt="-- hello, warm --", model="sonnet")
    warm = start_warm(invocation, config)
    outcome = runner.run_claude(invocation, config, warm=warm)

    assert outcome.ok and outcome.exit_code == 0 and outcome.pid == warm.pid
    assert outcome.data["result"] == "-- hello, warm --"
    argv = json.loads(argv_file.read_text())
    assert argv[1:8] == list(STREAM_ARGS)
    assert argv[argv.index("--model") + 1] == "sonnet"
    assert "--strict-mcp-config" in argv and "--" not in argv
    assert "hello" not in " ".join(argv)  # the prompt went to stdin, not to argv
    assert warm.proc.returncode == 0  # used once: it exited after its one prompt


def test_a_warm_cli_gets_its_mcp_configuration_in_a_private_file_removed_after_the_run(tmp_path):
    argv_file = tmp_path / "argv.json"
    config = fake_config(tmp_path, FAKE_CLAUDE_ARGV_FILE=str(argv_file))
    secret = "ghp_pool_secret"
    invocation = ClaudeInvocation(
        prompt="x",
        mcp_config={"mcpServers": {"github": {"command": "gh-mcp", "env": {"TOKEN": secret}}}},
        allowed_tools=("mcp__github",),
    )
    warm = start_warm(invocation, config)
    path = Path(warm.mcp_config_path)
    assert path.stat().st_mode & 0o777 == 0o600 and secret in path.read_text()
    outcome = runner.run_claude(invocation, config, warm=warm)
    assert outcome.ok
    argv = json.loads(argv_file.read_text())
    assert argv[argv.index("--mcp-config") + 1] == str(path) and secret not in json.dumps(argv)
    assert not path.exists()


def test_a_prompt_larger_than_a_pipe_buffer_reaches_the_warm_cli(tmp_path):
    config = fake_config(tmp_path)
    prompt = "x" * 300_000 + " ünïcode"
    outcome = runner.run_claude(
        ClaudeInvocation(prompt=prompt), config, warm=start_warm(ClaudeInvocation(prompt=""), config)
    )
    assert outcome.ok and outcome.data["result"] == prompt


def test_a_warm_cli_that_died_before_its_prompt_gives_way_to_a_cold_start(tmp_path):
    argv_file = tmp_path / "argv.json"
    config = fake_config(tmp_path, FAKE_CLAUDE_ARGV_FILE=str(argv_file))
    warm = start_warm(ClaudeInvocation(prompt=""), config)
    os.killpg(warm.pid, signal.SIGKILL)
    warm.proc.wait()
    outcome = runner.run_claude(ClaudeInvocation(prompt="after the warm one died"), config, warm=warm)
    assert outcome.ok and outcome.pid != warm.pid
    argv = json.loads(argv_file.read_text())
    assert outcome.data["result"] == "after the warm one died"
    assert "after the warm one died" not in argv  # cold runs take their prompt on stdin too


def test_warm_timeout_kills_the_whole_group(tmp_path, strays):
    pid_file = tmp_path / "grandchild.pid"
    config = fake_config(tmp_path, "hang", FAKE_CLAUDE_PID_FILE=str(pid_file))
    config = RunnerConfig(**{**config.__dict__, "timeout": 1.5})
    warm = start_warm(ClaudeInvocation(prompt=""), config)
    strays.append(warm.pid)
    outcome = runner.run_claude(ClaudeInvocation(prompt="hang please"), config, warm=warm)
    assert not outcome.ok and outcome.error_type == "cli_timeout"
    grandchild = int(pid_file.read_text())
    strays.append(grandchild)
    assert gone(warm.pid) and gone(grandchild) and group_members(warm.pid) == []


def test_a_warm_cli_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, strays):
    config = fake_config(tmp_path, "ignore_term")
    config = RunnerConfig(**{**config.__dict__, "timeout": 1.0, "kill_grace": 0.5})
    warm = start_warm(ClaudeInvocation(prompt=""), config)
    strays.append(warm.pid)
    outcome = runner.run_claude(ClaudeInvocation(prompt="stubborn"), config, warm=warm)
    assert outcome.error_type == "cli_timeout" and outcome.duration < 5
    assert gone(warm.pid)


def test_should_cancel_stops_a_warm_cli_and_its_group(tmp_path, strays):
    pid_file = tmp_path / "grandchild.pid"
    config = fake_config(tmp_path, "hang", FAKE_CLAUDE_PID_FILE=str(pid_file))
    warm = start_warm(ClaudeInvocation(prompt=""), config)
    strays.append(warm.pid)
    asked = time.monotonic() + 0.5
    outcome = runner.run_claude(
        ClaudeInvocation(prompt="cancel me"),
        config,
        warm=warm,
        should_cancel=lambda: time.monotonic() > asked,
    )
    assert outcome.error_type == "cancelled"
    strays.append(int(pid_file.read_text()))
    assert group_members(warm.pid) == []


def test_leftovers_of_a_warm_cli_that_answered_are_killed(tmp_path, strays):
    pid_file = tmp_path / "grandchild.pid"
    config = fake_config(tmp_path, "grandchild", FAKE_CLAUDE_PID_FILE=str(pid_file))
    warm = start_warm(ClaudeInvocation(prompt=""), config)
    outcome = runner.run_claude(ClaudeInvocation(prompt="leave something behind"), config, warm=warm)
    grandchild = int(pid_file.read_text())
    strays.append(grandchild)
    assert outcome.ok and outcome.data["result"] == "leave something behind"
    assert gone(grandchild)


# --- handed over across a fork, as the rq worker hands a warm CLI to its work horse -------------------


def run_in_horse(warm: WarmProcess, invocation: ClaudeInvocation, config: RunnerConfig, **kwargs):
    """Fork a 'work horse' that runs the warm CLI; the parent closes its pipe copies and reaps after."""
    pool.hand_over(warm)
    try:
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(read_end)
            outcome = runner.run_claude(invocation, config, warm=pool.handed(), **kwargs)
            with os.fdopen(write_end, "wb") as out:
                out.write(pickle.dumps(outcome))
            os._exit(0)
    finally:
        pool.hand_over(None)
    os.close(write_end)
    warm.close_pipes()
    with os.fdopen(read_end, "rb") as inp:
        data = inp.read()
    os.waitpid(child, 0)
    warm.discard(grace=1.0)  # the worker reaps it once the horse has exited
    return pickle.loads(data)


def test_a_horse_runs_the_warm_cli_its_worker_started_and_reads_its_exit_status(tmp_path):
    config = fake_config(tmp_path)
    warm = start_warm(ClaudeInvocation(prompt=""), config)
    outcome = run_in_horse(warm, ClaudeInvocation(prompt="from the horse"), config)
    assert outcome.ok and outcome.exit_code == 0 and outcome.data["result"] == "from the horse"
    assert warm.proc.returncode == 0

    failing = fake_config(tmp_path, "is_error")
    warm = start_warm(ClaudeInvocation(prompt=""), failing)
    outcome = run_in_horse(warm, ClaudeInvocation(prompt="x"), failing)
    assert outcome.error_type == "cli_error" and outcome.exit_code == 1  # read from /proc, not waited for
    assert "Not logged in" in outcome.error_message


def test_a_horse_times_out_a_warm_cli_and_kills_its_group(tmp_path, strays):
    pid_file = tmp_path / "grandchild.pid"
    config = fake_config(tmp_path, "hang", FAKE_CLAUDE_PID_FILE=str(pid_file))
    config = RunnerConfig(**{**config.__dict__, "timeout": 1.0})
    warm = start_warm(ClaudeInvocation(prompt=""), config)
    strays.append(warm.pid)
    outcome = run_in_horse(warm, ClaudeInvocation(prompt="hang"), config)
    assert outcome.error_type == "cli_timeout"
    strays.append(int(pid_file.read_text()))
    assert group_members(warm.pid) == [] and gone(int(pid_file.read_text()))


def test_another_forked_child_does_not_keep_a_warm_cli_waiting(tmp_path, strays):
    """rq's scheduler is forked from a worker: it must not hold the idle CLIs' stdin open."""
    cli_pool = CliPool(config=fake_config(tmp_path), size=1, max_age=60, max_keys=2)
    try:
        cli_pool.want(pool.DEFAULT_DESCRIPTOR)
        cli_pool.fill()
        bystander = os.fork()
        if bystander == 0:
            time.sleep(60)
            os._exit(0)
        strays.append(bystander)
        warm = cli_pool.take(pool.DEFAULT_DESCRIPTOR)
        started = time.monotonic()
        outcome = run_in_horse(warm, ClaudeInvocation(prompt="not held up"), cli_pool.config)
        assert outcome.ok and time.monotonic() - started < 5
    finally:
        cli_pool.close()
        for pid in strays:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        strays.clear()


# --- the pool ----------------------------------------------------------------------------------------


@pytest.fixture
def fake_pool(tmp_path) -> Iterator[CliPool]:
    cli_pool = CliPool(config=fake_config(tmp_path), size=1, max_age=60, max_keys=2)
    yield cli_pool
    cli_pool.close()


def test_each_warm_cli_is_taken_once_and_replaced_by_a_new_process(fake_pool):
    fake_pool.want(pool.DEFAULT_DESCRIPTOR)
    assert fake_pool.fill() == 1
    first = fake_pool.take(pool.DEFAULT_DESCRIPTOR)
    assert first is not None and fake_pool.take(pool.DEFAULT_DESCRIPTOR) is None
    assert fake_pool.fill() == 1
    second = fake_pool.take(pool.DEFAULT_DESCRIPTOR)
    assert second is not None and second.pid != first.pid
    for warm in (first, second):
        warm.discard()


def test_a_dead_warm_cli_is_never_handed_out_and_is_replaced(fake_pool):
    fake_pool.want(pool.DEFAULT_DESCRIPTOR)
    fake_pool.fill()
    (dead,) = fake_pool.idle()
    os.killpg(dead.pid, signal.SIGKILL)
    wait_for(lambda: dead.proc.poll() is not None, timeout=5, message="the warm CLI to die")
    assert fake_pool.take(pool.DEFAULT_DESCRIPTOR) is None
    assert fake_pool.fill() == 1
    (fresh,) = fake_pool.idle()
    assert fresh.pid != dead.pid and fresh.alive()


def test_a_stale_warm_cli_is_replaced(tmp_path):
    cli_pool = CliPool(config=fake_config(tmp_path), size=1, max_age=0.5, max_keys=2)
    try:
        cli_pool.want(pool.DEFAULT_DESCRIPTOR)
        cli_pool.fill()
        (old,) = cli_pool.idle()
        time.sleep(0.7)
        cli_pool.want(pool.DEFAULT_DESCRIPTOR)  # still in use, so its key is kept warm
        assert cli_pool.fill() == 1
        (new,) = cli_pool.idle()
        assert new.pid != old.pid and old.proc.returncode is not None and not old.alive()
        time.sleep(0.7)
        assert cli_pool.take(pool.DEFAULT_DESCRIPTOR) is None  # too old to hand out
        assert new.proc.returncode is not None
    finally:
        cli_pool.close()


def test_keys_nobody_uses_are_not_kept_warm(tmp_path):
    cli_pool = CliPool(config=fake_config(tmp_path), size=1, max_age=60, max_keys=2)
    try:
        for model in ("a", "b", "c"):
            cli_pool.want((model, ()))
            time.sleep(0.01)
        cli_pool.fill()
        assert {w.key for w in cli_pool.idle()} == {
            warm_key(ClaudeInvocation(prompt="", model=m), cli_pool.config) for m in ("b", "c")
        }
        assert cli_pool.idle(("a", ())) == []
    finally:
        cli_pool.close()
    assert cli_pool.idle() == []


def test_close_stops_every_idle_cli(fake_pool):
    fake_pool.want(pool.DEFAULT_DESCRIPTOR)
    fake_pool.want(("sonnet", ()))
    fake_pool.fill()
    procs = fake_pool.idle()
    assert len(procs) == 2
    fake_pool.close()
    assert all(warm.proc.returncode is not None for warm in procs)


def test_a_cli_that_cannot_start_leaves_the_pool_empty_and_jobs_cold(tmp_path):
    config = RunnerConfig(binary=str(tmp_path / "no-such-claude"), timeout=5, workdir=tmp_path / "work")
    cli_pool = CliPool(config=config, size=1, max_age=60, max_keys=2)
    cli_pool.want(pool.DEFAULT_DESCRIPTOR)
    assert cli_pool.fill() == 0 and cli_pool.take(pool.DEFAULT_DESCRIPTOR) is None


def test_no_pool_when_disabled_or_when_extra_args_set_a_format(settings):
    settings.CLAUDE_POOL_SIZE = 0
    assert pool.pool_from_settings() is None
    settings.CLAUDE_POOL_SIZE = 2
    settings.CLAUDE_EXTRA_ARGS = ("--output-format", "stream-json")
    assert pool.pool_from_settings() is None
    settings.CLAUDE_EXTRA_ARGS = ("--bare",)
    assert pool.pool_from_settings().size == 2


def test_the_job_meta_names_the_model_and_servers_only():
    meta = pool.job_meta(model="", servers=["fetch", "everything"])
    assert meta == {"cli": {"model": None, "servers": ["everything", "fetch"]}}
    assert pool.descriptor_from_meta(meta) == (None, ("everything", "fetch"))
    assert pool.descriptor_from_meta({}) is None and pool.descriptor_from_meta({"cli": "x"}) is None


def test_warm_keys_differ_by_every_option_but_the_prompt():
    config = RunnerConfig(binary="claude", timeout=5)
    base = ClaudeInvocation(prompt="a")
    key = warm_key(base, config)
    assert warm_key(ClaudeInvocation(prompt="b"), config) == key
    assert warm_key(ClaudeInvocation(prompt="a", model="opus"), config) != key
    assert warm_key(ClaudeInvocation(prompt="a", workdir="/srv/x"), config) != key
    with_server = ClaudeInvocation(
        prompt="a", mcp_config={"mcpServers": {"s": {"command": "x", "env": {"T": "1"}}}}
    )
    edited = ClaudeInvocation(
        prompt="a", mcp_config={"mcpServers": {"s": {"command": "x", "env": {"T": "2"}}}}
    )
    assert warm_key(with_server, config) != warm_key(edited, config)
    assert warm_key(base, RunnerConfig(binary="claude", timeout=5, extra_args=("--bare",))) != key


# --- claiming in the horse: hits, misses, a CLI started with other options ----------------------------


def counters() -> dict[str, int]:
    raw = redis_client().hgetall(COUNTERS_KEY)
    return {k.decode(): int(float(v)) for k, v in raw.items() if b"pool" in k}


def test_a_handed_cli_with_the_right_options_is_a_hit(tmp_path, db, redis_db):
    config = fake_config(tmp_path)
    invocation = ClaudeInvocation(prompt="q")
    warm = start_warm(invocation, config)
    pool.hand_over(warm)
    try:
        assert pool.pool_claim(invocation=invocation, config=config) is warm
        assert pool.handed() is None
    finally:
        warm.discard()
    assert counters() == {"claude_cli_pool_hits_total": 1}


def test_a_handed_cli_with_other_options_is_killed_and_the_job_starts_cold(tmp_path, db, redis_db):
    config = fake_config(tmp_path)
    warm = start_warm(ClaudeInvocation(prompt="", model="haiku"), config)
    pool.hand_over(warm)
    assert pool.pool_claim(invocation=ClaudeInvocation(prompt="q", model="opus"), config=config) is None
    wait_for(lambda: warm.proc.poll() is not None, timeout=5, message="the mismatched CLI to be killed")
    warm.discard()
    assert counters() == {"claude_cli_pool_misses_total": 1}


def test_without_a_handed_cli_a_run_is_a_miss_only_when_pooling_is_on(tmp_path, db, redis_db, settings):
    config = fake_config(tmp_path)
    settings.CLAUDE_POOL_SIZE = 0
    assert pool.pool_claim(invocation=ClaudeInvocation(prompt="q"), config=config) is None
    assert counters() == {}
    settings.CLAUDE_POOL_SIZE = 1
    assert pool.pool_claim(invocation=ClaudeInvocation(prompt="q"), config=config) is None
    assert counters() == {"claude_cli_pool_misses_total": 1}


@pytest.mark.django_db(transaction=True)
def test_an_enqueued_job_carries_its_pool_descriptor(redis_db):
    submission = services.query_submit(api_key=None, query="carry my meta", model="sonnet")
    rq_job = django_rq.get_queue("default").fetch_job(str(submission.job_id))
    assert pool.descriptor_from_meta(rq_job.meta) == ("sonnet", ())


# --- the real CLI ------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_real_cli_answers_warm_with_the_same_result_fields_as_cold(mock, tmp_path):
    config = real_config(mock, tmp_path)
    cold = runner.run_claude(ClaudeInvocation(prompt="What is 2+2?"), config)
    warm = start_warm(ClaudeInvocation(prompt=""), config)
    hot = runner.run_claude(ClaudeInvocation(prompt="What is 2+2?"), config, warm=warm)
    assert cold.ok and hot.ok and hot.exit_code == 0
    assert hot.data["result"] == cold.data["result"] == "4"
    for name in ("type", "subtype", "is_error", "num_turns", "session_id", "total_cost_usd", "usage"):
        assert name in hot.data, name
    assert hot.data["session_id"] != cold.data["session_id"]
    # One upstream request each: the warm CLI sent nothing before its prompt.
    assert len(mock.message_requests()) == 2


@pytest.mark.e2e
def test_the_real_cli_warm_in_a_horse_reports_upstream_errors_and_timeouts(mock, tmp_path, strays):
    config = real_config(mock, tmp_path, timeout=8.0)
    warm = start_warm(ClaudeInvocation(prompt=""), config)
    outcome = run_in_horse(warm, ClaudeInvocation(prompt="[[mock:error=400]] refuse"), config)
    assert outcome.error_type == "cli_error" and outcome.exit_code == 1 and "400" in outcome.error_message

    warm = start_warm(ClaudeInvocation(prompt=""), config)
    strays.append(warm.pid)
    outcome = run_in_horse(warm, ClaudeInvocation(prompt="[[mock:sleep=30]] hang"), config)
    assert outcome.error_type == "cli_timeout"
    assert group_members(warm.pid) == []


@pytest.mark.e2e
def test_the_real_cli_warm_with_an_mcp_server_uses_its_tools(mock, tmp_path):
    served = tmp_path / "work"
    served.mkdir()
    (served / "note.txt").write_text("warm and served")
    bin_dir = Path(real_claude_bin()).parent
    config = real_config(mock, tmp_path)
    config = RunnerConfig(
        **{**config.__dict__, "env": {**config.env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}}
    )
    invocation = ClaudeInvocation(
        prompt=f'[[mock:tool=mcp__fs__read_text_file input={{"path": "{served}/note.txt"}}]] read it',
        mcp_config={"mcpServers": {"fs": {"command": "mcp-server-filesystem", "args": [str(served)]}}},
        allowed_tools=("mcp__fs",),
    )
    warm = start_warm(invocation, config)
    outcome = runner.run_claude(invocation, config, warm=warm)
    assert outcome.ok, outcome.error_message
    assert "warm and served" in outcome.data["result"]
    assert group_members(warm.pid) == []  # the MCP server went with it


# --- end to end: gunicorn, a real rq worker with its pool, the real CLI --------------------------------


def submit_and_wait(http, body: dict, timeout: float = 60) -> dict:
    response = http.post(f"{http.base}/api/query", json=body, timeout=30)
    assert response.status_code == 202, response.text
    return wait_finished(http, response.json()["jobId"], timeout=timeout)


def warm_children(worker_pid: int) -> list[int]:
    """Warm CLIs waiting in a worker process: its children started with --input-format."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == worker_pid and fields[0] not in "ZX" and b"--input-format" in cmdline:
            pids.append(int(entry.name))
    return pids


def scrape(http, name: str) -> float:
    text = requests.get(f"{http.base}/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not on /metrics")


FORK = pytest.mark.parametrize("fork", ["false", "true"], ids=["in-process", "forking"])


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@FORK
def test_jobs_take_warm_clis_one_each_and_the_pool_counts_hits_and_misses(http, worker_process, fork):
    worker = worker_process(env={"WORKER_FORK": fork})
    first_warm = wait_for(lambda: warm_children(worker.pid), timeout=30, message="a warm CLI")
    one = submit_and_wait(http, {"query": "[[mock:text=first]] one"})
    # At rest the worker replaces the CLI job one took before the next job comes. (Submitted at once,
    # job two could be queued before the worker is back from job one, and start cold.)
    wait_for(
        lambda: [pid for pid in warm_children(worker.pid) if pid != first_warm[0]],
        timeout=30,
        message="the replacement of the first warm CLI",
    )
    two = submit_and_wait(http, {"query": "[[mock:text=second]] two"})
    assert (one["state"], one["result"]["response"]) == ("completed", "first")
    assert (two["state"], two["result"]["response"]) == ("completed", "second")
    pids = [Job.objects.get(id=body["jobId"]).cli_pid for body in (one, two)]
    assert pids[0] == first_warm[0] and pids[1] != pids[0]  # a fresh process for each query
    assert all(group_members(pid) == [] for pid in pids)
    # A replacement waits for the next job.
    assert wait_for(lambda: warm_children(worker.pid), timeout=30, message="a replacement")[0] not in pids

    # A model nobody asked for yet has no warm CLI: cold, and one is kept warm for it from then on.
    three = submit_and_wait(http, {"query": "[[mock:text=third]] three", "model": "claude-haiku-4-5"})
    # The worker starts it once no job is waiting (a queued job would start cold: module doc).
    wait_for(lambda: len(warm_children(worker.pid)) == 2, timeout=30, message="a warm CLI for the model")
    four = submit_and_wait(http, {"query": "[[mock:text=fourth]] four", "model": "claude-haiku-4-5"})
    assert three["state"] == four["state"] == "completed"
    assert scrape(http, "claude_cli_pool_hits_total") == 3
    assert scrape(http, "claude_cli_pool_misses_total") == 1


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_with_the_pool_off_jobs_start_their_cli_cold(http, worker_process):
    worker = worker_process(env={"CLAUDE_POOL_SIZE": "0"})
    body = submit_and_wait(http, {"query": "[[mock:text=cold]] no pool"})
    assert body["state"] == "completed" and body["result"]["response"] == "cold"
    assert warm_children(worker.pid) == []
    assert scrape(http, "claude_cli_pool_hits_total") == 0
    assert scrape(http, "claude_cli_pool_misses_total") == 0


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@FORK
def test_cancelling_a_job_on_a_warm_cli_kills_its_group(http, worker_process, fork):
    worker = worker_process(env={"WORKER_FORK": fork})
    wait_for(lambda: warm_children(worker.pid), timeout=30, message="a warm CLI")
    response = http.post(f"{http.base}/api/query", json={"query": "[[mock:sleep=60]] slow"}, timeout=30)
    job_id = response.json()["jobId"]
    job = wait_for(
        lambda: Job.objects.filter(id=job_id, cli_pid__isnull=False).first(), timeout=30, message="the CLI"
    )
    assert group_members(job.cli_pid)
    services.job_cancel(job_id=job_id)
    body = wait_for(
        lambda: (
            (r := http.get(f"{http.base}/api/query/{job_id}", timeout=10).json())["state"] == "cancelled"
            and r
        ),
        timeout=30,
        message="the cancellation",
    )
    assert body["error"]["type"] == "cancelled"
    wait_for(lambda: group_members(job.cli_pid) == [], timeout=10, message="the CLI group to be gone")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@FORK
def test_a_warm_cli_times_out_like_a_cold_one_and_leaves_no_process(http, worker_process, fork):
    worker = worker_process(env={"WORKER_FORK": fork, "CLAUDE_TIMEOUT": "3", "CLAUDE_KILL_GRACE": "1"})
    wait_for(lambda: warm_children(worker.pid), timeout=30, message="a warm CLI")
    body = submit_and_wait(http, {"query": "[[mock:sleep=30]] the upstream never answers"})
    assert body["state"] == "failed" and body["error"]["type"] == "cli_timeout"
    job = Job.objects.get(id=body["jobId"])
    assert group_members(job.cli_pid) == []
    assert scrape(http, "claude_cli_pool_hits_total") == 1


# --- a worker that died mid-job --------------------------------------------------------------------------


def test_running_jobs_of_a_dead_worker_on_this_host_fail_as_worker_lost(db, redis_db):
    import socket
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    dead = Job.objects.create(
        hash="a" * 64, query="q", state=Job.State.RUNNING, worker_name=f"{host}:{gone.pid}"
    )
    alive = Job.objects.create(hash="b" * 64, query="q", state=Job.State.RUNNING, worker_name=f"{host}:1")
    mine = Job.objects.create(
        hash="c" * 64, query="q", state=Job.State.RUNNING, worker_name=f"{host}:{os.getpid()}"
    )
    elsewhere = Job.objects.create(
        hash="d" * 64, query="q", state=Job.State.RUNNING, worker_name="other-host:1"
    )

    assert services.job_orphans_fail() == 1
    assert services.job_orphans_fail(idle_pid=os.getpid()) == 1  # a pid reused by the caller itself
    states = {job.pk: (job.state, job.error_type) for job in Job.objects.all()}
    assert states[dead.pk] == states[mine.pk] == (Job.State.FAILED, Job.ErrorType.WORKER_LOST)
    assert states[alive.pk][0] == states[elsewhere.pk][0] == Job.State.RUNNING


@pytest.mark.django_db(transaction=True)
def test_the_pool_refills_only_when_no_job_is_waiting(fake_pool, fake_claude, settings, redis_db):
    from queries.worker import GatewayInProcessWorker

    queues = [django_rq.get_queue(name) for name in settings.RQ_QUEUE_NAMES]
    worker = GatewayInProcessWorker(queues, connection=queues[0].connection)
    worker._cli_pool = fake_pool
    fake_pool.want(pool.DEFAULT_DESCRIPTOR)
    services.query_submit(api_key=None, query="a job is waiting")
    assert worker.dequeue_job_and_maintain_ttl(timeout=1) is not None
    assert fake_pool.idle() == []  # the waiting job starts cold rather than wait for a warm CLI
    assert worker.dequeue_job_and_maintain_ttl(timeout=1, max_idle_time=1) is None
    assert len(fake_pool.idle()) == 1  # no work waiting: the pool is full again


@pytest.mark.django_db(transaction=True)
def test_the_pool_refills_once_the_clis_still_answering_have_finished(
    fake_pool, settings, monkeypatch, redis_db
):
    """After a burst the last jobs' CLIs keep the CPU to themselves; the refill follows them."""
    from core.metrics import CLI_RUNNING_KEY
    from queries.worker import GatewayInProcessWorker

    queues = [django_rq.get_queue(name) for name in settings.RQ_QUEUE_NAMES]
    worker = GatewayInProcessWorker(queues, connection=queues[0].connection)
    worker._cli_pool = fake_pool
    fake_pool.want(pool.DEFAULT_DESCRIPTOR)
    redis_client().zadd(CLI_RUNNING_KEY, {"another-workers-job": time.time() + 60})
    assert worker.dequeue_job_and_maintain_ttl(timeout=5, max_idle_time=1) is None
    assert fake_pool.idle() == []  # another CLI is answering: the refill waits
    assert worker._cli_pool_due() and worker._cli_pool_backlog()

    redis_client().zrem(CLI_RUNNING_KEY, "another-workers-job")
    assert worker.dequeue_job_and_maintain_ttl(timeout=5, max_idle_time=1) is None
    assert len(fake_pool.idle()) == 1 and worker._cli_pool_deferred_since is None

    # However long other CLIs go on (other hosts count too), a refill waits REFILL_DEFER_MAX at most.
    fake_pool.close()
    fake_pool.want(pool.DEFAULT_DESCRIPTOR)
    monkeypatch.setattr(pool, "REFILL_DEFER_MAX", 0.0)
    redis_client().zadd(CLI_RUNNING_KEY, {"a-long-job": time.time() + 60})
    assert worker.dequeue_job_and_maintain_ttl(timeout=5, max_idle_time=1) is None
    assert len(fake_pool.idle()) == 1
