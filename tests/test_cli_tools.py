"""How every process finds the Claude CLI and its MCP servers' commands, and names the account."""

from __future__ import annotations

import os
from pathlib import Path

from claude_cli.invocation import RunnerConfig
from claude_cli.process import child_env
from core import cli_tools

PINNED = cli_tools.PINNED_BIN_DIR / "claude"


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_claude_bin_prefers_the_setting_then_path_then_the_pinned_cli(tmp_path):
    assert cli_tools.claude_bin("/opt/claude") == "/opt/claude"
    assert cli_tools.claude_bin("claude-beta") == "claude-beta"
    on_path = executable(tmp_path / "bin" / "claude").parent
    assert cli_tools.claude_bin("", path=str(on_path)) == "claude"
    assert PINNED.exists(), "scripts/bootstrap installs the pinned CLI"
    assert cli_tools.claude_bin("", path=str(tmp_path / "empty")) == str(PINNED)


def test_the_origin_is_said_for_people():
    assert cli_tools.claude_bin_origin(str(PINNED), setting=str(PINNED)) == "the pinned CLI in node_tools/"
    assert cli_tools.claude_bin_origin("/opt/claude", setting="/opt/claude") == "CLAUDE_BIN"
    assert cli_tools.claude_bin_origin("/usr/bin/claude", setting="claude") == "'claude' on PATH"


def test_the_cli_and_its_mcp_servers_find_the_gateways_tools_on_path():
    dirs = cli_tools.tool_dirs()
    assert str(cli_tools.PINNED_BIN_DIR) in dirs
    config = RunnerConfig(binary="claude", timeout=1, env={"PATH": "/usr/bin:/bin"}, tool_dirs=dirs)
    path = child_env(config)["PATH"].split(os.pathsep)
    assert path[:2] == ["/usr/bin", "/bin"] and path[2:] == list(dirs)  # the operator's PATH first
    again = RunnerConfig(binary="claude", timeout=1, env={"PATH": os.pathsep.join(dirs)}, tool_dirs=dirs)
    assert child_env(again)["PATH"].split(os.pathsep) == list(dirs)  # never twice


def test_the_account_names_the_endpoint_and_masks_the_key(tmp_path):
    key = "sk-ant-api03-" + "x" * 80 + "f3a9"
    endpoint, account = cli_tools.claude_account({"ANTHROPIC_API_KEY": key, "HOME": str(tmp_path)})
    assert endpoint == "https://api.anthropic.com (the default API)"
    assert account == "ANTHROPIC_API_KEY sk-ant-…f3a9"
    endpoint, account = cli_tools.claude_account(
        {"ANTHROPIC_BASE_URL": "http://127.0.0.1:8089", "ANTHROPIC_AUTH_TOKEN": "short", "HOME": "/x"}
    )
    assert endpoint == "http://127.0.0.1:8089 (ANTHROPIC_BASE_URL)" and account == "ANTHROPIC_AUTH_TOKEN ****"
    assert cli_tools.claude_account({"CLAUDE_CODE_USE_BEDROCK": "1", "HOME": "/x"})[0].startswith("Amazon")

    _, account = cli_tools.claude_account({"HOME": str(tmp_path)})
    assert account == f"none: no ANTHROPIC_API_KEY and no `claude login` in $HOME ({tmp_path})"
    (tmp_path / ".claude").mkdir()
    (tmp_path / ".claude" / ".credentials.json").write_text("{}")
    _, account = cli_tools.claude_account({"HOME": str(tmp_path)})
    assert account == f"the `claude login` in $HOME ({tmp_path / '.claude' / '.credentials.json'})"
