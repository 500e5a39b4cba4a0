"""The Claude runner against a fake CLI that misbehaves on demand, and once against the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_cli.invocation import (
    CLI_ERROR_TYPES,
    ClaudeInvocation,
    ClaudeOutcome,
    RunnerConfig,
    build_argv,
    build_cold_argv,
    preview_argv,
)
from claude_cli.runner import run_claude
from tests.support.processes import FAKE_CLAUDE, NODE_BIN

REAL_CLAUDE = NODE_BIN / "claude"

pytestmark = pytest.mark.timeout(60)


def fake_config(
    tmp_path: Path, mode: str, *, extra_env: dict[str, str] | None = None, **overrides: Any
) -> RunnerConfig:
    fields: dict[str, Any] = {
        "binary": str(FAKE_CLAUDE),
        "timeout": 10.0,
        "kill_grace": 1.0,
        "workdir": tmp_path / "work",
        "env": {**os.environ, "FAKE_CLAUDE_MODE": mode, **(extra_env or {})},
        **overrides,
    }
    return RunnerConfig(**fields)


def run_fake(tmp_path: Path, mode: str, prompt: str = "hello", **overrides: Any) -> ClaudeOutcome:
    return run_claude(ClaudeInvocation(prompt=prompt), fake_config(tmp_path, mode, **overrides))


def is_gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for init (or a subreaper) to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return any(line.split()[1:2] == ["Z"] for line in status.splitlines() if line.startswith("State:"))


def wait_gone(pid: int, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not is_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def read_pid(path: Path) -> int:
    return int(path.read_text())


@pytest.fixture
def reap_strays() -> Iterator[list[int]]:
    """Kill any grandchild a failing test leaves behind, so one failure doesn't leak sleeps."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not is_gone(pid):
            os.kill(pid, signal.SIGKILL)


# build_argv


STREAM = [
    "--print",
    "--input-format",
    "stream-json",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
]


def test_argv_reads_stream_json_and_never_holds_the_prompt() -> None:
    argv = build_argv(ClaudeInvocation(prompt="What is 2+2?"), RunnerConfig(binary="claude", timeout=5))

    assert argv == ["claude", *STREAM, "--strict-mcp-config"]


def test_the_prompt_is_one_stream_json_user_message_with_its_blocks() -> None:
    assert json.loads(ClaudeInvocation(prompt="--help me").user_message_line()) == {
        "type": "user",
        "message": {"role": "user", "content": "--help me"},
    }
    blocks = [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
    ]
    line = ClaudeInvocation(prompt="What is this?", content=blocks).user_message_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["message"]["content"] == blocks


def test_a_cold_text_prompt_routed_to_mcp_servers_goes_after_double_dash() -> None:
    mcp = {"mcpServers": {"fs": {"command": "mcp-server-filesystem", "args": ["/srv"]}}}
    config = RunnerConfig(binary="claude", timeout=5)
    routed = ClaudeInvocation(prompt="read x", mcp_config=mcp, allowed_tools=("mcp__fs",))
    argv = build_cold_argv(routed, config)
    assert "--input-format" not in argv and argv[-2:] == ["--", "read x"]
    assert "--include-partial-messages" in argv
    # Without servers, or with content blocks, the prompt goes to stdin.
    assert build_cold_argv(ClaudeInvocation(prompt="read x"), config)[-1] == "--strict-mcp-config"
    blocks = ClaudeInvocation(prompt="x", mcp_config=mcp, content=[{"type": "text", "text": "x"}])
    assert "--input-format" in build_cold_argv(blocks, config)


def test_argv_passes_the_system_prompt_as_a_file_or_inline() -> None:
    invocation = ClaudeInvocation(prompt="hi", system_prompt="-- be terse")
    config = RunnerConfig(binary="claude", timeout=5)

    assert "--system-prompt=-- be terse" in build_argv(invocation, config)
    argv = build_argv(invocation, config, system_prompt_path="/tmp/claude-system-x.txt")
    assert argv[argv.index("--system-prompt-file") + 1] == "/tmp/claude-system-x.txt"
    assert "-- be terse" not in " ".join(argv)


def test_argv_adds_model_mcp_tools_and_extra_args_in_order() -> None:
    mcp = {"mcpServers": {"fs": {"command": "mcp-server-filesystem", "args": ["/srv"]}}}
    invocation = ClaudeInvocation(
        prompt="read x.txt",
        model="claude-sonnet-4-5",
        mcp_config=mcp,
        allowed_tools=("mcp__fs__read_text_file", "mcp__fs__list_directory"),
    )
    config = RunnerConfig(binary="/opt/claude", timeout=5, extra_args=("--bare", "--max-turns", "3"))

    argv = build_argv(invocation, config)

    assert argv == [
        "/opt/claude",
        *STREAM,
        "--model",
        "claude-sonnet-4-5",
        "--mcp-config",
        json.dumps(mcp),
        "--strict-mcp-config",
        "--allowedTools",
        "mcp__fs__read_text_file",
        "mcp__fs__list_directory",
        "--bare",
        "--max-turns",
        "3",
    ]


@pytest.mark.parametrize("mcp_config", [None, {}, {"mcpServers": {}}])
def test_argv_without_servers_is_still_strict_so_no_other_mcp_configuration_leaks_in(
    mcp_config: dict | None,
) -> None:
    argv = build_argv(
        ClaudeInvocation(prompt="hi", mcp_config=mcp_config), RunnerConfig(binary="claude", timeout=5)
    )

    assert "--mcp-config" not in argv
    assert "--strict-mcp-config" in argv
    assert "--allowedTools" not in argv
    assert "--model" not in argv


def test_argv_takes_the_mcp_configuration_from_a_file_when_given_one() -> None:
    mcp = {"mcpServers": {"gh": {"command": "mcp-server-github", "env": {"TOKEN": "ghp_secret"}}}}
    argv = build_argv(
        ClaudeInvocation(prompt="hi", mcp_config=mcp),
        RunnerConfig(binary="claude", timeout=5),
        mcp_config_path="/tmp/claude-mcp-x.json",
    )

    assert argv[argv.index("--mcp-config") + 1] == "/tmp/claude-mcp-x.json"
    assert "ghp_secret" not in " ".join(argv)


def test_a_run_passes_mcp_secrets_in_a_private_file_never_on_the_command_line(tmp_path) -> None:
    argv_file = tmp_path / "argv.json"
    mcp = {"mcpServers": {"gh": {"command": "mcp-server-github", "env": {"TOKEN": "ghp_secret"}}}}
    config = RunnerConfig(
        binary=str(FAKE_CLAUDE),
        timeout=10,
        workdir=tmp_path,
        env={**os.environ, "FAKE_CLAUDE_MODE": "ok", "FAKE_CLAUDE_ARGV_FILE": str(argv_file)},
    )

    outcome = run_claude(ClaudeInvocation(prompt="hi", mcp_config=mcp), config)

    assert outcome.ok
    argv = json.loads(argv_file.read_text())
    assert "ghp_secret" not in json.dumps(argv)
    path = argv[argv.index("--mcp-config") + 1]
    assert not os.path.exists(path)  # removed after the run


def test_preview_masks_mcp_secrets() -> None:
    mcp = {"mcpServers": {"gh": {"command": "mcp-server-github", "env": {"TOKEN": "ghp_secret"}}}}
    argv = preview_argv(
        ClaudeInvocation(prompt="hi", mcp_config=mcp), RunnerConfig(binary="claude", timeout=5)
    )
    shown = json.loads(argv[argv.index("--mcp-config") + 1])
    assert shown["mcpServers"]["gh"]["env"] == {"TOKEN": "***"}
    assert "ghp_secret" not in " ".join(argv)


def test_invocation_repr_masks_mcp_secrets() -> None:
    invocation = ClaudeInvocation(
        prompt="hi",
        mcp_config={
            "mcpServers": {
                "github": {"command": "gh-mcp", "env": {"GITHUB_TOKEN": "ghp_s3cret"}},
                "api": {
                    "type": "http",
                    "url": "https://mcp.example",
                    "headers": {"Authorization": "Bearer tok9"},
                },
            }
        },
    )

    text = repr(invocation)

    assert "ghp_s3cret" not in text
    assert "tok9" not in text
    assert "GITHUB_TOKEN" in text
    assert "gh-mcp" in text
    # Masking is for display only: the CLI still gets the real values.
    argv = build_argv(invocation, RunnerConfig(binary="claude", timeout=5))
    assert "ghp_s3cret" in argv[argv.index("--mcp-config") + 1]


def test_runner_config_repr_hides_the_environment() -> None:
    config = RunnerConfig(binary="claude", timeout=5, env={"ANTHROPIC_API_KEY": "sk-ant-s3cret"})

    assert "sk-ant-s3cret" not in repr(config)


def test_config_from_settings_reads_the_claude_settings(tmp_path: Path) -> None:
    from django.conf import settings

    if not settings.configured:
        pytest.skip("Django settings are not configured")
    from django.test import override_settings

    with override_settings(
        CLAUDE_BIN="/opt/claude",
        CLAUDE_TIMEOUT=30,
        CLAUDE_KILL_GRACE=2,
        CLAUDE_WORKDIR=str(tmp_path),
        CLAUDE_EXTRA_ARGS=["--bare"],
        CLAUDE_MAX_OUTPUT_BYTES=4096,
        CLAUDE_DISABLE_NONESSENTIAL_TRAFFIC=False,
        CLAUDE_TOOL_DIRS=("/opt/tools/bin",),
    ):
        config = RunnerConfig.from_settings(settings)

    assert config == RunnerConfig(
        binary="/opt/claude",
        timeout=30.0,
        kill_grace=2.0,
        workdir=tmp_path,
        extra_args=("--bare",),
        max_output_bytes=4096,
        disable_nonessential_traffic=False,
        tool_dirs=("/opt/tools/bin",),
    )


def test_error_types_are_the_documented_ones() -> None:
    assert set(CLI_ERROR_TYPES) == {
        "cli_timeout",
        "cli_error",
        "cli_output_invalid",
        "cli_not_found",
        "cancelled",
        "upstream_auth",
        "upstream_unavailable",
    }


# Success and the environment the CLI sees


def test_success_returns_the_parsed_result(tmp_path: Path) -> None:
    argv_file = tmp_path / "argv.json"

    outcome = run_fake(
        tmp_path, "ok", prompt="-n What is 2+2?", extra_env={"FAKE_CLAUDE_ARGV_FILE": str(argv_file)}
    )

    assert outcome.ok, outcome
    assert outcome.error_type is None
    assert outcome.error_message == ""
    assert outcome.exit_code == 0
    assert outcome.data is not None
    assert outcome.data["result"] == "-n What is 2+2?"
    assert outcome.data["is_error"] is False
    assert outcome.duration > 0
    assert json.loads(argv_file.read_text())[1:] == [*STREAM, "--strict-mcp-config"]


def test_on_start_receives_the_pid_of_the_running_cli(tmp_path: Path) -> None:
    seen: list[tuple[int, bool]] = []

    outcome = run_claude(
        ClaudeInvocation(prompt="hi"),
        fake_config(tmp_path, "ok"),
        on_start=lambda pid: seen.append((pid, not is_gone(pid))),
    )

    assert outcome.ok
    assert seen == [(outcome.pid, True)]


def test_environment_disables_nonessential_traffic_and_runs_in_the_workdir(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"}
    workdir = tmp_path / "not" / "yet" / "there"

    outcome = run_fake(tmp_path, "env", env={**env, "FAKE_CLAUDE_MODE": "env"}, workdir=workdir)

    assert outcome.ok, outcome
    assert outcome.data is not None
    seen = json.loads(outcome.data["result"])
    assert seen["disable_nonessential_traffic"] == "1"
    assert Path(seen["cwd"]) == workdir.resolve()


def test_environment_keeps_an_explicit_nonessential_traffic_setting(tmp_path: Path) -> None:
    outcome = run_fake(tmp_path, "env", extra_env={"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "0"})

    assert outcome.data is not None
    assert json.loads(outcome.data["result"])["disable_nonessential_traffic"] == "0"


def test_environment_setting_can_be_turned_off(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"}

    outcome = run_fake(
        tmp_path, "env", env={**env, "FAKE_CLAUDE_MODE": "env"}, disable_nonessential_traffic=False
    )

    assert outcome.data is not None
    assert json.loads(outcome.data["result"])["disable_nonessential_traffic"] == "<unset>"


def test_stdin_is_closed_after_the_prompt(tmp_path: Path) -> None:
    outcome = run_fake(tmp_path, "stdin", timeout=5.0)

    assert outcome.ok, outcome
    assert outcome.data is not None
    assert outcome.data["result"] == "read 0 bytes from stdin"
    assert outcome.duration < 3


def test_stream_json_output_uses_the_last_result_line(tmp_path: Path) -> None:
    lines = [
        {"type": "system", "subtype": "init", "tools": []},
        {"type": "assistant", "message": {"content": [{"type": "text", "text": "4"}]}},
        {"type": "result", "subtype": "success", "is_error": False, "result": "4"},
    ]
    stdout = "\n".join(json.dumps(line) for line in lines) + "\n"

    outcome = run_fake(tmp_path, "print", extra_env={"FAKE_CLAUDE_STDOUT": stdout})

    assert outcome.ok, outcome
    assert outcome.data == lines[-1]


def test_on_event_gets_text_deltas_and_tool_activity_as_they_are_printed(tmp_path: Path) -> None:
    seen: list[dict] = []

    outcome = run_claude(ClaudeInvocation(prompt="4"), fake_config(tmp_path, "stream"), on_event=seen.append)

    assert outcome.ok, outcome
    assert seen == [
        {"type": "text", "text": "Let me "},
        {"type": "text", "text": "look."},
        {"type": "tool", "name": "mcp__fs__read_text_file", "phase": "start"},
        {"type": "tool", "name": "mcp__fs__read_text_file", "phase": "end"},
        {"type": "text", "text": "4"},
    ]


# Failures reported by the CLI


def test_is_error_is_a_cli_error_with_the_cli_text(tmp_path: Path) -> None:
    outcome = run_fake(tmp_path, "is_error")

    assert not outcome.ok
    assert outcome.error_type == "cli_error"
    assert "Not logged in" in outcome.error_message
    assert outcome.exit_code == 1
    assert outcome.data is not None and outcome.data["is_error"] is True


def test_non_zero_exit_without_output_reports_code_and_stderr(tmp_path: Path) -> None:
    outcome = run_fake(tmp_path, "exit2")

    assert outcome.error_type == "cli_error"
    assert outcome.exit_code == 2
    assert "code 2" in outcome.error_message
    assert "unknown option '--frobnicate'" in outcome.error_message
    assert "unknown option" in outcome.stderr
    assert outcome.data is None


@pytest.mark.parametrize(
    ("result", "exit_code", "expected"),
    [
        ({"subtype": "error_max_turns", "is_error": False}, 1, "error_max_turns"),
        ({"subtype": "error_during_execution", "is_error": False}, 0, "error_during_execution"),
        (
            {"subtype": "success", "is_error": True, "api_error_status": 400, "result": "API Error: 400 bad"},
            1,
            "API Error: 400 bad",
        ),
        (
            {"subtype": "success", "is_error": False, "api_error_status": 529, "result": "overloaded"},
            0,
            "529",
        ),
        ({"subtype": "success", "is_error": False, "result": "4"}, 3, "code 3"),
    ],
)
def test_result_objects_that_are_failures(
    tmp_path: Path, result: dict, exit_code: int, expected: str
) -> None:
    stdout = json.dumps({"type": "result", **result})

    outcome = run_fake(
        tmp_path, "print", extra_env={"FAKE_CLAUDE_STDOUT": stdout, "FAKE_CLAUDE_EXIT": str(exit_code)}
    )

    assert outcome.error_type == "cli_error"
    assert expected in outcome.error_message
    assert outcome.data == {"type": "result", **result}
    assert outcome.exit_code == exit_code


def test_null_api_error_status_is_not_an_error(tmp_path: Path) -> None:
    # The real CLI prints "api_error_status": null on ordinary runs.
    stdout = json.dumps({"type": "result", "subtype": "success", "is_error": False, "api_error_status": None})

    outcome = run_fake(tmp_path, "print", extra_env={"FAKE_CLAUDE_STDOUT": stdout})

    assert outcome.ok, outcome


# Output that is not a result


def test_garbage_output_is_invalid_with_an_excerpt(tmp_path: Path) -> None:
    outcome = run_fake(tmp_path, "garbage")

    assert outcome.error_type == "cli_output_invalid"
    assert "this is not json" in outcome.error_message
    assert outcome.exit_code == 0
    assert outcome.data is None


@pytest.mark.parametrize("stdout", ["", "   \n", "[1, 2]", '"4"', '{"hello": "world"}'])
def test_exit_zero_without_a_result_object_is_invalid(tmp_path: Path, stdout: str) -> None:
    outcome = run_fake(tmp_path, "print", extra_env={"FAKE_CLAUDE_STDOUT": stdout})

    assert outcome.error_type == "cli_output_invalid"
    assert not outcome.ok


def test_output_over_the_cap_stops_the_cli_quickly(tmp_path: Path) -> None:
    outcome = run_fake(tmp_path, "big", max_output_bytes=256 * 1024, timeout=30.0)

    assert outcome.error_type == "cli_output_invalid"
    assert "exceeded 262144 bytes" in outcome.error_message
    assert outcome.duration < 5
    assert outcome.pid is not None and wait_gone(outcome.pid)


def test_output_over_the_cap_is_invalid_even_when_the_cli_exits_at_once(tmp_path: Path) -> None:
    stdout = json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "x" * 5000})

    outcome = run_fake(tmp_path, "print", max_output_bytes=1024, extra_env={"FAKE_CLAUDE_STDOUT": stdout})

    assert outcome.error_type == "cli_output_invalid"
    assert "exceeded 1024 bytes" in outcome.error_message
    assert outcome.data is None


# Stopping the process group


def test_hang_times_out_and_the_whole_group_is_gone(tmp_path: Path, reap_strays: list[int]) -> None:
    pid_file = tmp_path / "grandchild.pid"

    outcome = run_fake(
        tmp_path, "hang", timeout=1.0, kill_grace=2.0, extra_env={"FAKE_CLAUDE_PID_FILE": str(pid_file)}
    )
    reap_strays.append(read_pid(pid_file))

    assert outcome.error_type == "cli_timeout"
    assert "1 seconds" in outcome.error_message
    assert outcome.exit_code is None
    # SIGTERM is enough for this one, so it ends well before the SIGKILL would come.
    assert 1.0 <= outcome.duration < 1.0 + 2.0
    assert outcome.pid is not None and wait_gone(outcome.pid, timeout=0.5)
    assert wait_gone(read_pid(pid_file))


def test_a_cli_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path, reap_strays: list[int]) -> None:
    pid_file = tmp_path / "grandchild.pid"

    outcome = run_fake(
        tmp_path,
        "ignore_term",
        timeout=1.0,
        kill_grace=1.0,
        extra_env={"FAKE_CLAUDE_PID_FILE": str(pid_file)},
    )
    reap_strays.append(read_pid(pid_file))

    assert outcome.error_type == "cli_timeout"
    # Only SIGKILL could end it, and that comes kill_grace after SIGTERM.
    assert 2.0 <= outcome.duration < 2.0 + 1.5
    assert outcome.pid is not None and wait_gone(outcome.pid, timeout=0.5)
    assert wait_gone(read_pid(pid_file))


def test_a_grandchild_holding_the_pipe_does_not_hang_the_run_and_is_killed(
    tmp_path: Path, reap_strays: list[int]
) -> None:
    pid_file = tmp_path / "grandchild.pid"

    outcome = run_fake(
        tmp_path, "grandchild", timeout=20.0, extra_env={"FAKE_CLAUDE_PID_FILE": str(pid_file)}
    )
    grandchild = read_pid(pid_file)
    reap_strays.append(grandchild)

    assert outcome.ok, outcome
    assert outcome.duration < 3
    assert wait_gone(grandchild)


def test_should_cancel_stops_the_group(tmp_path: Path, reap_strays: list[int]) -> None:
    pid_file = tmp_path / "grandchild.pid"
    started = time.monotonic()
    calls = 0

    def should_cancel() -> bool:
        nonlocal calls
        calls += 1
        return time.monotonic() - started > 1.2

    outcome = run_claude(
        ClaudeInvocation(prompt="hi"),
        fake_config(tmp_path, "hang", timeout=30.0, extra_env={"FAKE_CLAUDE_PID_FILE": str(pid_file)}),
        should_cancel=should_cancel,
    )
    reap_strays.append(read_pid(pid_file))

    assert outcome.error_type == "cancelled"
    assert outcome.exit_code is None
    assert outcome.duration < 3
    # Polled about every 0.5 s, not in a busy loop.
    assert 2 <= calls <= 5
    assert outcome.pid is not None and wait_gone(outcome.pid, timeout=0.5)
    assert wait_gone(read_pid(pid_file))


def test_an_exception_from_a_callback_kills_the_group_and_propagates(tmp_path: Path) -> None:
    pids: list[int] = []

    def on_start(pid: int) -> None:
        pids.append(pid)
        raise RuntimeError("progress store is down")

    with pytest.raises(RuntimeError, match="progress store is down"):
        run_claude(ClaudeInvocation(prompt="hi"), fake_config(tmp_path, "hang"), on_start=on_start)

    assert wait_gone(pids[0], timeout=0.5)


# Starting


def test_missing_binary_path_is_cli_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-claude"

    outcome = run_fake(tmp_path, "ok", binary=str(missing))

    assert outcome.error_type == "cli_not_found"
    assert str(missing) in outcome.error_message
    assert outcome.pid is None
    assert outcome.exit_code is None


def test_binary_not_on_path_is_cli_not_found(tmp_path: Path) -> None:
    outcome = run_fake(tmp_path, "ok", binary="claude", env={"PATH": str(tmp_path)})

    assert outcome.error_type == "cli_not_found"
    assert "'claude'" in outcome.error_message


def test_bare_name_is_found_on_the_env_path(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{FAKE_CLAUDE.parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    outcome = run_fake(tmp_path, "ok", binary="claude", env={**env, "FAKE_CLAUDE_MODE": "ok"})

    assert outcome.ok, outcome


def test_binary_that_is_not_executable_is_cli_not_found(tmp_path: Path) -> None:
    plain = tmp_path / "claude"
    plain.write_text("#!/bin/sh\necho hi\n")
    plain.chmod(0o644)

    outcome = run_fake(tmp_path, "ok", binary=str(plain))

    assert outcome.error_type == "cli_not_found"
    assert "not executable" in outcome.error_message


# The real CLI


def real_claude_binary() -> str | None:
    configured = os.environ.get("CLAUDE_BIN_REAL") or os.environ.get("CLAUDE_BIN")
    if configured:
        return shutil.which(configured) if os.sep not in configured else configured
    return str(REAL_CLAUDE) if REAL_CLAUDE.exists() else None


@pytest.mark.e2e
def test_real_cli_without_credentials_is_a_cli_error(tmp_path: Path) -> None:
    binary = real_claude_binary()
    if binary is None or not Path(binary).exists():
        pytest.skip("the real claude CLI is not installed")
    home = tmp_path / "home"
    home.mkdir()
    credentials = {
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_BASE_URL",
        "CLAUDE_CODE_OAUTH_TOKEN",
    }
    env = {k: v for k, v in os.environ.items() if k not in credentials and k != "CLAUDE_CONFIG_DIR"}
    env["HOME"] = str(home)
    config = RunnerConfig(binary=binary, timeout=60.0, workdir=tmp_path / "work", env=env)

    outcome = run_claude(ClaudeInvocation(prompt="What is 2+2?"), config)

    assert outcome.error_type == "cli_error", outcome
    assert "Not logged in" in outcome.error_message
    assert outcome.exit_code == 1
    assert outcome.data is not None and outcome.data["is_error"] is True
