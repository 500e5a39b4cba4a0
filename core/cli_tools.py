"""Where the Claude CLI and its MCP servers' commands are, for every process of the gateway.

``scripts/serve`` puts the pinned CLI (``node_tools/``) and the virtualenv's commands on PATH; a
``manage.py`` command or a worker started from a plain shell has neither. Settings resolve
``CLAUDE_BIN`` and the tool directories here once, so the runner, ``/ready`` and ``check_claude``
find the same binary whoever started the process, and MCP servers (``mcp-server-fetch`` and the
like) are found by the CLI they are started from.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
PINNED_BIN_DIR = PROJECT_DIR / "node_tools" / "node_modules" / ".bin"
DEFAULT_API = "https://api.anthropic.com"


def tool_dirs() -> tuple[str, ...]:
    """The gateway's own command directories that exist: the pinned npm tools, then this Python's bin."""
    dirs = (PINNED_BIN_DIR, Path(sys.executable).parent)
    return tuple(str(d) for d in dirs if d.is_dir())


def claude_bin(configured: str, *, path: str | None = None) -> str:
    """CLAUDE_BIN as given; unset, ``claude`` when it is on PATH, else the pinned CLI in node_tools/."""
    if configured:
        return configured
    if shutil.which("claude", path=path) is not None:
        return "claude"
    pinned = PINNED_BIN_DIR / "claude"
    return str(pinned) if os.access(pinned, os.X_OK) else "claude"


def claude_bin_origin(resolved: str, *, setting: str) -> str:
    """Where the binary came from, said for people (check_claude's first line)."""
    if Path(resolved).parent == PINNED_BIN_DIR:
        return "the pinned CLI in node_tools/"
    if os.sep in setting:
        return "CLAUDE_BIN"
    return f"{setting!r} on PATH"


def secret_hint(value: str) -> str:
    """Enough of a key to tell which one it is, never enough to use it: ``sk-ant-…f3a9``."""
    if len(value) < 16:
        return "****"
    return f"{value[:7]}…{value[-4:]}"


def claude_account(env: Mapping[str, str]) -> tuple[str, str]:
    """(endpoint, credentials) the CLI will use with this environment, secrets masked."""
    if env.get("CLAUDE_CODE_USE_BEDROCK"):
        endpoint = "Amazon Bedrock (CLAUDE_CODE_USE_BEDROCK)"
    elif env.get("CLAUDE_CODE_USE_VERTEX"):
        endpoint = "Google Vertex AI (CLAUDE_CODE_USE_VERTEX)"
    elif env.get("ANTHROPIC_BASE_URL"):
        endpoint = f"{env['ANTHROPIC_BASE_URL']} (ANTHROPIC_BASE_URL)"
    else:
        endpoint = f"{DEFAULT_API} (the default API)"
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"):
        if env.get(name):
            return endpoint, f"{name} {secret_hint(env[name])}"
    home = Path(env.get("HOME") or "~").expanduser()
    login = home / ".claude" / ".credentials.json"
    if login.exists():
        return endpoint, f"the `claude login` in $HOME ({login})"
    return endpoint, f"none: no ANTHROPIC_API_KEY and no `claude login` in $HOME ({home})"
