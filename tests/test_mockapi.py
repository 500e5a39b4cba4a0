"""The mock Anthropic API on its own, and the real ``claude`` CLI answering through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mockapi import MockAnthropic
from tests.support import REPO
from tests.support.processes import NODE_BIN

MCP_FILESYSTEM = NODE_BIN / "mcp-server-filesystem"
CLI_TIMEOUT = 60


def _claude_bin() -> Path:
    return Path(os.environ.get("CLAUDE_BIN") or NODE_BIN / "claude")


def _post(url: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in raw.decode().strip().split("\n\n"):
        event, data = frame.split("\n")
        events.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


@pytest.fixture
def mock_api() -> Iterator[MockAnthropic]:
    with MockAnthropic() as server:
        yield server


# --- the mock alone ------------------------------------------------------------------------------


def test_streams_sse_for_the_last_user_prompt(mock_api: MockAnthropic) -> None:
    body = {
        "model": "claude-test",
        "stream": True,
        "messages": [
            {"role": "user", "content": "[[mock:text=not this one]]"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>\n2+2 [[x]]\n</system-reminder>\n"},
                    {"type": "text", "text": "say hello"},
                ],
            },
        ],
    }
    status, content_type, raw = _post(mock_api.url + "/v1/messages?beta=true", body)

    assert (status, content_type) == (200, "text/event-stream")
    events = _sse(raw)
    assert [e for e, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0][1]["message"]["model"] == "claude-test"
    assert events[0][1]["message"]["usage"]["input_tokens"] > 0
    assert events[2][1]["delta"] == {"type": "text_delta", "text": "echo: say hello"}
    assert events[4][1]["delta"]["stop_reason"] == "end_turn"
    assert events[4][1]["usage"]["output_tokens"] > 0
    assert mock_api.message_requests() == [body]


def test_non_streamed_tool_use_then_tool_result(mock_api: MockAnthropic) -> None:
    prompt = '[[mock:tool=mcp__fs__read_text_file input={"path": "/tmp/x.txt"}]]'
    first = {"model": "m", "stream": False, "messages": [{"role": "user", "content": prompt}]}
    status, content_type, raw = _post(mock_api.url + "/v1/messages", first)

    assert (status, content_type) == (200, "application/json")
    message = json.loads(raw)
    assert message["stop_reason"] == "tool_use"
    [block] = message["content"]
    assert block["type"] == "tool_use"
    assert block["name"] == "mcp__fs__read_text_file"
    assert block["input"] == {"path": "/tmp/x.txt"}

    second = {
        "model": "m",
        "stream": True,
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": [block]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": block["id"],
                        "content": [{"type": "text", "text": "file text"}],
                    }
                ],
            },
        ],
    }
    events = _sse(_post(mock_api.url + "/v1/messages", second)[2])
    assert events[2][1]["delta"]["text"] == "tool said: file text"


def test_streamed_tool_use_sends_input_as_json_delta(mock_api: MockAnthropic) -> None:
    prompt = "[[mock:tool=t input={}]]"
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    events = _sse(_post(mock_api.url + "/v1/messages", body)[2])

    start, delta = events[1][1], events[2][1]
    assert start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["input"] == {}
    assert delta["delta"] == {"type": "input_json_delta", "partial_json": "{}"}
    assert events[4][1]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_directive(mock_api: MockAnthropic, status: int, error_type: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": f"[[mock:error={status}]]"}]}
    got_status, _, raw = _post(mock_api.url + "/v1/messages", body)

    assert got_status == status
    assert json.loads(raw) == {"type": "error", "error": {"type": error_type, "message": "mock error"}}


def test_unknown_paths_are_json_404s(mock_api: MockAnthropic) -> None:
    status, content_type, raw = _post(mock_api.url + "/v1/messages/count_tokens", {})

    assert (status, content_type) == (404, "application/json")
    assert json.loads(raw)["type"] == "error"
    assert mock_api.message_requests() == []


def test_control_endpoints(mock_api: MockAnthropic) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "[[mock:text=a]]"}]}
    _post(mock_api.url + "/v1/messages", body)

    assert _get_json(mock_api.url + "/_mock/requests") == [body]
    assert _post(mock_api.url + "/_mock/reset", {})[0] == 200
    assert _get_json(mock_api.url + "/_mock/requests") == []
    assert mock_api.requests == []


def test_standalone_process_writes_its_port(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "mockapi.py"), "--port", "0", "--port-file", str(port_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        printed = proc.stdout.readline().strip()
        assert port_file.read_text().strip() == printed
        url = f"http://127.0.0.1:{printed}"
        body = {"model": "m", "messages": [{"role": "user", "content": "What is 2+2?"}]}
        assert json.loads(_post(url + "/v1/messages", body)[2])["content"][0]["text"] == "4"
        assert _get_json(url + "/_mock/requests") == [body]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


# --- the real CLI --------------------------------------------------------------------------------

RunClaude = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def claude_bin() -> Path:
    path = _claude_bin()
    if not os.access(path, os.X_OK):
        pytest.skip(f"claude CLI not found at {path}")
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    # Resolved, because the filesystem MCP server compares real paths.
    path = (tmp_path / "work").resolve()
    path.mkdir()
    return path


@pytest.fixture
def claude_env(mock_api: MockAnthropic, tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": mock_api.url,
        "ANTHROPIC_API_KEY": "test-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


@pytest.fixture
def run_claude(claude_bin: Path, claude_env: dict[str, str], workdir: Path) -> RunClaude:
    def run(prompt: str, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(claude_bin), "-p", "--output-format", "json", "--bare", *args, "--", prompt],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=claude_env,
            cwd=workdir,
            timeout=timeout,
        )

    return run


def _result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout.strip(), f"no output; stderr: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


@pytest.mark.e2e
def test_cli_answers_through_the_mock(run_claude: RunClaude, mock_api: MockAnthropic) -> None:
    proc = run_claude("What is 2+2?")

    assert proc.returncode == 0, proc.stderr
    result = _result(proc)
    assert result["result"] == "4"
    assert result["is_error"] is False
    assert result["subtype"] == "success"
    assert result["total_cost_usd"] > 0
    assert result["usage"]["input_tokens"] > 0
    [request] = mock_api.message_requests()
    assert request["stream"] is True
    assert [(h.method, h.path) for h in mock_api.hits] == [
        ("HEAD", "/"),
        ("POST", "/v1/messages?beta=true"),
    ]


@pytest.mark.e2e
def test_cli_echoes_the_prompt_after_a_sleep(run_claude: RunClaude) -> None:
    started = time.monotonic()
    proc = run_claude("[[mock:sleep=0.5]] hello there")

    assert proc.returncode == 0, proc.stderr
    assert _result(proc)["result"] == "echo: [[mock:sleep=0.5]] hello there"
    assert time.monotonic() - started >= 0.5


@pytest.mark.e2e
def test_cli_reports_an_upstream_400(run_claude: RunClaude) -> None:
    proc = run_claude("[[mock:error=400]]")

    assert proc.returncode == 1
    result = _result(proc)
    assert result["is_error"] is True
    assert result["api_error_status"] == 400


@pytest.mark.e2e
def test_cli_keeps_retrying_an_upstream_401(
    claude_bin: Path, claude_env: dict[str, str], workdir: Path, mock_api: MockAnthropic
) -> None:
    proc = subprocess.Popen(
        [str(claude_bin), "-p", "--output-format", "json", "--bare", "--", "[[mock:error=401]]"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=claude_env,
        cwd=workdir,
        start_new_session=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        assert proc.poll() is None
        assert len(mock_api.message_requests()) >= 2
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.mark.e2e
def test_cli_calls_a_real_mcp_server_for_a_tool_use(
    run_claude: RunClaude, mock_api: MockAnthropic, workdir: Path
) -> None:
    if not os.access(MCP_FILESYSTEM, os.X_OK):
        pytest.skip(f"mcp-server-filesystem not found at {MCP_FILESYSTEM}")
    hello = workdir / "hello.txt"
    hello.write_text("hello from the file\n")
    mcp_config = {"mcpServers": {"fs": {"command": str(MCP_FILESYSTEM), "args": [str(workdir)]}}}
    tool_input = json.dumps({"path": str(hello)})

    proc = run_claude(
        f"[[mock:tool=mcp__fs__read_text_file input={tool_input}]]",
        "--mcp-config",
        json.dumps(mcp_config),
        "--strict-mcp-config",
        "--allowedTools",
        "mcp__fs__read_text_file",
    )

    assert proc.returncode == 0, proc.stderr
    result = _result(proc)
    assert result["is_error"] is False
    assert result["num_turns"] == 2
    assert result["result"].startswith("tool said: ")
    assert "hello from the file" in result["result"]
    first, second = mock_api.message_requests()
    assert "mcp__fs__read_text_file" in {tool["name"] for tool in first["tools"]}
    assert second["messages"][-1]["content"][0]["type"] == "tool_result"


@pytest.mark.e2e
def test_cli_returns_a_big_answer_whole(run_claude: RunClaude) -> None:
    proc = run_claude("[[mock:big=200000]]")

    assert proc.returncode == 0, proc.stderr
    result = _result(proc)
    assert len(result["result"]) == 200000
    assert set(result["result"]) == {"x"}
