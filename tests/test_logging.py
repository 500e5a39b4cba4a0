"""Structured logs: JSON lines with requestId and jobId through web and worker, and no secret in any line."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from core import logs
from queries.models import Job, QueryRequest
from routing.models import IntentRule, McpServer
from tests.support import REPO
from tests.support.pipeline import run_queued_jobs
from tests.support.processes import start_web_server
from tests.support.receivers import Receiver
from tests.support.waiting import wait_for

MCP_SECRET = "mcp-env-secret-6f1d9a2c"
MCP_HEADER_SECRET = "mcp-header-secret-77ab10"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@contextlib.contextmanager
def capture(formatter: logging.Formatter) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(logs.ContextFilter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


@pytest.fixture
def json_lines() -> Iterator[Callable[[], list[dict]]]:
    with capture(logs.JsonFormatter()) as stream:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    with capture(logs.TextFormatter()) as stream:
        yield stream


# --- in one process ----------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_request_id_a_client_gets_is_on_the_web_and_worker_lines(client, fake_claude, json_lines):
    fake_claude("exit2")  # fails with "error: unknown option" on stderr
    response = client.post("/api/query", {"query": "hello there"}, format="json")
    assert response.status_code == 202
    body = response.json()
    assert response["X-Request-ID"] == body["requestId"]

    access = [e for e in json_lines() if e["logger"] == "gateway.access"]
    assert access[-1]["message"].startswith("POST /api/query 202 ")
    assert access[-1]["requestId"] == body["requestId"] and access[-1]["jobId"] == body["jobId"]

    run_queued_jobs()
    assert Job.objects.get(id=body["jobId"]).state == "failed"
    worker_lines = [
        e for e in json_lines() if e["jobId"] == body["jobId"] and e["logger"] != "gateway.access"
    ]
    assert worker_lines, json_lines()
    assert all(e["requestId"] == body["requestId"] for e in worker_lines)
    failure = next(e for e in worker_lines if e["logger"] == "queries.jobs")
    assert failure["level"] == "WARNING" and failure["errorType"] == "cli_error"
    assert failure["exitCode"] == 2 and "unknown option" in failure["stderrTail"]
    for entry in json_lines():
        assert {"time", "level", "logger", "message", "requestId", "jobId"} <= set(entry)


@pytest.mark.django_db(transaction=True)
def test_a_joined_requests_row_takes_its_http_request_id(client, json_lines):
    first = client.post("/api/query", {"query": "same"}, format="json")
    second = client.post("/api/query", {"query": "same"}, format="json")
    assert second.json()["deduplicated"] is True
    for response in (first, second):
        assert QueryRequest.objects.filter(id=response["X-Request-ID"]).exists()


def test_the_stderr_tail_in_a_log_line_is_capped(json_lines):
    job = Job(state="failed", error_type="cli_error", error_message="boom", exit_code=1)
    job.stderr_tail = "x" * 6000 + "the end"
    logs.job_failure_log(job=job)
    line = next(e for e in json_lines() if e["logger"] == "queries.jobs")
    assert len(line["stderrTail"]) == logs.STDERR_LOG_CHARS and line["stderrTail"].endswith("the end")


def test_text_format_has_the_ids_and_masks_secrets_too(text_log):
    with logs.log_context(request_id="0b6f5b52-4b0e-4b8e-9c1e-5d1e00000000", job_id="job-1"):
        logging.getLogger("demo").warning("token %s", "cgw_abcdefghijklmnopqrstuvwxyz012345")
    line = text_log.getvalue()
    assert " WARNING demo [requestId=0b6f5b52-4b0e-4b8e-9c1e-5d1e00000000 jobId=job-1] token " in line
    assert "cgw_abcdefghijklmnop" not in line and logs.MASK in line


@pytest.mark.parametrize(
    "secret",
    [
        "cgw_Zk3Jx1s0cYlq2p9bVq8H0kq8x3nYw4Jw5v6u7t8s9rQ",  # a gateway API key
        WEBHOOK_SECRET,
        "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    ],
)
def test_secrets_are_masked_wherever_they_hide_in_a_record(json_lines, secret):
    log = logging.getLogger("demo")
    log.info("plain %s", secret)
    log.info("header Authorization: Bearer %s", secret)
    log.warning("extra", extra={"detail": {"nested": [f"x {secret} y"]}})
    try:
        raise ValueError(f"bad key {secret}")
    except ValueError:
        log.exception("while handling")
    lines = json_lines()
    assert len(lines) == 4
    dumped = json.dumps(lines)
    assert secret not in dumped and secret[:16] not in dumped
    assert logs.MASK in lines[0]["message"] and logs.MASK in lines[3]["exception"]


def test_registered_values_are_masked_and_bearer_tokens_of_any_shape(json_lines):
    logs.secrets_register_mcp(
        {
            "mcpServers": {
                "vault": {"command": "x", "env": {"TOKEN": MCP_SECRET, "DEBUG": "1"}},
                "api": {"type": "http", "url": "https://x", "headers": {"Authorization": MCP_HEADER_SECRET}},
            }
        }
    )
    log = logging.getLogger("demo")
    log.info("server said: %s and %s (DEBUG=1)", MCP_SECRET, MCP_HEADER_SECRET)
    log.info("upstream sent Authorization: Bearer abc.DEF-123_456~xyz")
    log.info("dsn postgres://gateway:hunter2-password@db:5432/gateway")
    first, second, third = (e["message"] for e in json_lines())
    assert MCP_SECRET not in first and MCP_HEADER_SECRET not in first
    assert first.endswith("(DEBUG=1)")  # short values are not treated as secrets
    assert "abc.DEF-123_456~xyz" not in second
    assert "hunter2-password" not in third and "postgres://" in third


# --- web and worker processes ----------------------------------------------------------------------------

ECHOING_CLI = """#!{python}
# A CLI that, failing, prints its MCP configuration and its environment's key on stderr.
import os, sys
args = sys.argv[1:]
if "--version" in args:
    print("2.1.0 (Claude Code)")
    sys.exit(0)
config = args[args.index("--mcp-config") + 1] if "--mcp-config" in args else ""
if config and os.path.exists(config):
    config = open(config).read()
sys.stderr.write("fatal: could not start MCP servers from " + config + "\\n")
sys.stderr.write("ANTHROPIC_API_KEY=" + os.environ.get("ANTHROPIC_API_KEY", "") + "\\n")
sys.exit(1)
"""


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_no_api_key_webhook_secret_or_mcp_secret_reaches_any_log_line(
    mock, tmp_path, processes, worker_process, api_key
):
    cli = tmp_path / "claude"
    cli.write_text(ECHOING_CLI.format(python=sys.executable))
    cli.chmod(0o755)
    server = McpServer.objects.create(
        name="vault", command="vault-mcp", args=["--serve"], env={"VAULT_TOKEN": MCP_SECRET}
    )
    rule = IntentRule.objects.create(name="vault", pattern=r"\bvault\b", order=1)
    rule.servers.add(server)

    env = {
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "LOG_LEVEL": "DEBUG",
        "CLAUDE_BIN": str(cli),
    }
    with Receiver() as hook:
        url = start_web_server(processes, mock, tmp_path, **env)
        worker_process(claude_bin=str(cli), env=env)
        key = api_key[1]
        http = requests.Session()
        response = http.post(
            f"{url}/api/query",
            json={"query": "read the vault please", "webhookUrl": hook.url("/h")},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["jobId"]
        # Wrong and malformed keys, in both headers, and a key in a query string.
        http.post(f"{url}/api/query", json={"query": "x"}, headers={"Authorization": f"Bearer {key}x"})
        http.post(f"{url}/api/query", json={"query": "x"}, headers={"X-API-Key": key[:-2]})
        http.get(f"{url}/api/query/{job_id}?key={key}", headers={"X-API-Key": key})
        job = wait_for(
            lambda: Job.objects.filter(id=job_id, state__in=Job.FINISHED_STATES).first(),
            timeout=60,
            message="the job to fail",
        )
        assert job.state == "failed" and MCP_SECRET in job.stderr_tail  # the CLI did print it
        hook.wait_for(1, timeout=20)

    log_files = sorted(Path(tmp_path).glob("web-*.log")) + sorted(Path(tmp_path).glob("worker-*.log"))
    lines = [line for f in log_files for line in f.read_text().splitlines() if line.strip()]
    text = "\n".join(lines)
    for secret in (key, key[:-2], WEBHOOK_SECRET, MCP_SECRET, "sk-test-mock"):
        assert secret not in text, f"{secret[:8]}… appears in the logs"
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    failure = next(e for e in entries if e["logger"] == "queries.jobs" and e["jobId"] == job_id)
    assert "could not start MCP servers" in failure["stderrTail"] and logs.MASK in failure["stderrTail"]
    assert failure["requestId"] == response.json()["requestId"]


def test_a_bad_log_format_stops_start_up_naming_the_variable():
    import os
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", "import gateway_project.settings"],
        env={**os.environ, "LOG_FORMAT": "xml", "DJANGO_SETTINGS_MODULE": "gateway_project.settings"},
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode != 0 and "LOG_FORMAT" in result.stderr
