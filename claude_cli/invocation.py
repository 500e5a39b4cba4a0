"""What one CLI run is, how the runner is configured, the argv built from both, and the outcome."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from claude_cli.upstream import UpstreamFailure

CliErrorType = Literal[
    "cli_timeout",
    "cli_error",
    "cli_output_invalid",
    "cli_not_found",
    "cancelled",
    "upstream_auth",
    "upstream_unavailable",
]
CLI_ERROR_TYPES: tuple[CliErrorType, ...] = get_args(CliErrorType)

NONESSENTIAL_TRAFFIC_VAR = "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"
DEFAULT_MAX_OUTPUT_BYTES = 10 * 1024 * 1024
_MASK = "***"
# stdio servers take secrets in env, http and sse servers in headers (Authorization).
_SECRET_SERVER_KEYS = ("env", "headers")


@dataclass(frozen=True)
class ClaudeInvocation:
    """One CLI run: the prompt verbatim, plus the model and MCP servers that routing chose.

    ``content`` (content blocks: text, images) replaces ``prompt`` as the user message's content
    when given; ``system_prompt`` replaces the CLI's default system prompt.
    """

    prompt: str
    model: str | None = None
    mcp_config: dict[str, Any] | None = None
    allowed_tools: tuple[str, ...] = ()
    # Overrides RunnerConfig.workdir: the filesystem MCP server serves the CLI's working directory.
    workdir: str | None = None
    # Continue this CLI session (``--resume ID --fork-session``): its file must be where the CLI looks
    # (claude_cli.sessions). The fork is saved as ``session_id``, chosen by the caller, so two
    # continuations of one session never write the same file.
    resume: str | None = None
    session_id: str | None = None
    content: list[dict[str, Any]] | None = None
    system_prompt: str | None = None

    def __repr__(self) -> str:
        # MCP server env values and headers hold tokens and passwords; repr ends up in logs and tracebacks.
        blocks = f", content=<{len(self.content)} blocks>" if self.content else ""
        return (
            f"ClaudeInvocation(prompt={self.prompt!r}, model={self.model!r}, "
            f"mcp_config={masked_mcp_config(self.mcp_config)!r}, allowed_tools={self.allowed_tools!r}, "
            f"workdir={self.workdir!r}{blocks}, system_prompt={self.system_prompt!r}, "
            f"resume={self.resume!r}, session_id={self.session_id!r})"
        )

    def user_message_line(self) -> bytes:
        """The prompt as the one stream-json ``user`` message the CLI reads from its stdin."""
        content: Any = self.content if self.content else self.prompt
        message = {"type": "user", "message": {"role": "user", "content": content}}
        return (json.dumps(message, ensure_ascii=False) + "\n").encode()


@dataclass(frozen=True)
class RunnerConfig:
    binary: str
    timeout: float
    kill_grace: float = 5.0
    workdir: Path | None = None
    extra_args: tuple[str, ...] = ()
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    # The environment holds ANTHROPIC_API_KEY: keep it out of repr.
    env: Mapping[str, str] | None = field(default=None, repr=False)
    disable_nonessential_traffic: bool = True
    # Appended to the CLI's PATH where missing: the gateway's own command directories, so the CLI
    # and the MCP servers it starts are found whoever started this process.
    tool_dirs: tuple[str, ...] = ()
    # False: ``--no-session-persistence``, the CLI writes no session file and nothing can be resumed.
    sessions: bool = True

    @classmethod
    def from_settings(cls, settings: Any) -> RunnerConfig:
        """The configuration from an object with the CLAUDE_* attributes (Django's settings)."""
        workdir = getattr(settings, "CLAUDE_WORKDIR", None)
        return cls(
            binary=getattr(settings, "CLAUDE_BIN", "claude"),
            timeout=float(getattr(settings, "CLAUDE_TIMEOUT", 120.0)),
            kill_grace=float(getattr(settings, "CLAUDE_KILL_GRACE", 5.0)),
            workdir=Path(workdir) if workdir else None,
            extra_args=tuple(getattr(settings, "CLAUDE_EXTRA_ARGS", ())),
            max_output_bytes=int(getattr(settings, "CLAUDE_MAX_OUTPUT_BYTES", DEFAULT_MAX_OUTPUT_BYTES)),
            disable_nonessential_traffic=bool(getattr(settings, "CLAUDE_DISABLE_NONESSENTIAL_TRAFFIC", True)),
            tool_dirs=tuple(getattr(settings, "CLAUDE_TOOL_DIRS", ())),
            sessions=bool(getattr(settings, "SESSIONS_ENABLED", True)),
        )


@dataclass(frozen=True)
class ClaudeOutcome:
    ok: bool
    error_type: CliErrorType | None
    error_message: str
    data: dict[str, Any] | None
    exit_code: int | None
    stderr: str
    duration: float
    pid: int | None
    # The last failed upstream request the CLI reported (retried or final), whatever the outcome.
    upstream: UpstreamFailure | None = None


STREAM_ARGS = (
    "--print",
    "--input-format",
    "stream-json",
    "--output-format",
    "stream-json",
    "--verbose",  # the CLI refuses stream-json output in --print mode without it
    "--include-partial-messages",  # the upstream's SSE events (text deltas) as they arrive
)


def build_argv(
    invocation: ClaudeInvocation,
    config: RunnerConfig,
    *,
    mcp_config_path: str | None = None,
    system_prompt_path: str | None = None,
) -> list[str]:
    """The CLI's argv, cold or warm alike: the prompt is never in it. It goes to stdin as one
    stream-json ``user`` message (:meth:`ClaudeInvocation.user_message_line`), which carries content
    blocks (images) as they are, and stays out of ps.

    ``--strict-mcp-config`` is always given: without it the CLI adds the MCP servers of the user's
    and the project's own configuration, so a query routed to no server would still get tools.
    The MCP configuration and the system prompt go in as files when their paths are given
    (run_claude does so: argv is readable by every local user through ps, and server env values
    hold secrets), else inline.
    """
    argv = [config.binary, *STREAM_ARGS]
    if invocation.model:
        argv += ["--model", invocation.model]
    if invocation.system_prompt:
        if system_prompt_path:
            argv += ["--system-prompt-file", system_prompt_path]
        else:
            argv.append(f"--system-prompt={invocation.system_prompt}")
    if invocation.mcp_config and invocation.mcp_config.get("mcpServers"):
        argv += ["--mcp-config", mcp_config_path or json.dumps(invocation.mcp_config)]
    argv.append("--strict-mcp-config")
    if invocation.allowed_tools:
        argv += ["--allowedTools", *invocation.allowed_tools]
    argv += session_args(invocation, config)
    argv += [*config.extra_args]
    return argv


def session_args(invocation: ClaudeInvocation, config: RunnerConfig) -> list[str]:
    """The session options: continue a session as a fork with a chosen id, or keep none at all."""
    if not config.sessions:
        return ["--no-session-persistence"]
    if invocation.resume is None:
        return []
    argv = ["--resume", invocation.resume, "--fork-session"]
    if invocation.session_id:
        argv += ["--session-id", invocation.session_id]
    return argv


# What the gateway sets itself for every run: CLAUDE_EXTRA_ARGS may not set it too (a second
# --resume, or --continue, would run a turn in a session the gateway did not choose).
RESERVED_ARGS = (
    "--resume",
    "-r",
    "--continue",
    "-c",
    "--fork-session",
    "--session-id",
    "--no-session-persistence",
)


def reserved_args_used(extra_args: tuple[str, ...] | list[str]) -> list[str]:
    """The options among ``extra_args`` that the gateway sets itself (RESERVED_ARGS)."""
    return [arg for arg in extra_args if arg.split("=", 1)[0] in RESERVED_ARGS]


def prompt_in_argv(invocation: ClaudeInvocation) -> bool:
    """Whether a cold run takes its prompt after ``--`` instead of on stdin: a text prompt routed to
    MCP servers. The CLI connects its MCP servers before it sends a prompt from its command line,
    but a stream-json message read at start-up can go upstream before they are connected, without
    their tools (seen with the filesystem server). Content blocks need stdin all the same."""
    return not invocation.content and bool((invocation.mcp_config or {}).get("mcpServers"))


def build_cold_argv(
    invocation: ClaudeInvocation,
    config: RunnerConfig,
    *,
    mcp_config_path: str | None = None,
    system_prompt_path: str | None = None,
) -> list[str]:
    """:func:`build_argv`, or for :func:`prompt_in_argv` the same without ``--input-format`` and
    with ``-- <prompt>`` last (``--allowedTools`` takes several values and would swallow it)."""
    argv = build_argv(
        invocation, config, mcp_config_path=mcp_config_path, system_prompt_path=system_prompt_path
    )
    if not prompt_in_argv(invocation):
        return argv
    at = argv.index("--input-format")
    return [*argv[:at], *argv[at + 2 :], "--", invocation.prompt]


def warm_capable(config: RunnerConfig) -> bool:
    """Whether CLIs can be started ahead of time with this configuration: CLAUDE_EXTRA_ARGS that set
    the input or output format would contradict the stream-json that the pool expects."""
    return not any(arg.split("=", 1)[0] in ("--input-format", "--output-format") for arg in config.extra_args)


def warm_key(invocation: ClaudeInvocation, config: RunnerConfig) -> str:
    """What a CLI started ahead of time must have been started with to answer this invocation: every
    argument and setting but the prompt and the system prompt (both go to its stdin: warm_input).
    SHA-256, so MCP secrets never show in logs or process state."""
    invocation = replace(invocation, system_prompt=None)
    workdir = invocation.workdir or (str(config.workdir) if config.workdir else None)
    fields = {
        "argv": build_argv(invocation, config, mcp_config_path="-"),
        "mcp": invocation.mcp_config if (invocation.mcp_config or {}).get("mcpServers") else None,
        "workdir": workdir,
        "traffic": config.disable_nonessential_traffic,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# The stream-json control request that sets a warm CLI's system prompt (warm_input).
WARM_INIT_REQUEST_ID = "gateway-system-prompt"


def warm_input(invocation: ClaudeInvocation) -> bytes:
    """What a warm CLI gets on its stdin: the invocation's system prompt, if it has one, then the
    prompt as the one stream-json ``user`` message.

    A warm CLI was started without a system prompt: the CLI reads ``--system-prompt-file`` once, at
    start-up, and never again. The system prompt goes in as the stream-json ``initialize`` control
    request (``systemPrompt``, as the Agent SDK sends it) before the message; the CLI answers it with
    a ``control_response`` line and sends upstream exactly the system prompt a cold run with
    ``--system-prompt-file`` sends. So one warm CLI serves every system prompt.
    """
    message = invocation.user_message_line()
    if not invocation.system_prompt:
        return message
    request = {
        "type": "control_request",
        "request_id": WARM_INIT_REQUEST_ID,
        "request": {"subtype": "initialize", "systemPrompt": invocation.system_prompt},
    }
    return (json.dumps(request, ensure_ascii=False) + "\n").encode() + message


def preview_argv(invocation: ClaudeInvocation, config: RunnerConfig) -> list[str]:
    """The argv a run would use, with the MCP configuration inline and its secrets masked."""
    masked = replace(invocation, mcp_config=masked_mcp_config(invocation.mcp_config))
    return build_argv(masked, config)


def masked_mcp_config(mcp_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The MCP configuration with every env value and header masked."""
    if mcp_config is None or not isinstance(servers := mcp_config.get("mcpServers"), dict):
        return mcp_config
    return {**mcp_config, "mcpServers": {name: _mask_server(server) for name, server in servers.items()}}


def _mask_server(server: Any) -> Any:
    if not isinstance(server, dict):
        return server
    masked = dict(server)
    for key in _SECRET_SERVER_KEYS:
        if isinstance(masked.get(key), dict):
            masked[key] = dict.fromkeys(masked[key], _MASK)
    return masked


# The MCP configuration file


def mcp_config_write(invocation: ClaudeInvocation) -> str | None:
    """The invocation's MCP configuration in a new file only this user can read (mode 0600)."""
    if not (invocation.mcp_config and invocation.mcp_config.get("mcpServers")):
        return None
    return _private_file_write(json.dumps(invocation.mcp_config), prefix="claude-mcp-", suffix=".json")


def system_prompt_write(invocation: ClaudeInvocation) -> str | None:
    """The invocation's system prompt in a new file only this user can read (mode 0600)."""
    if not invocation.system_prompt:
        return None
    return _private_file_write(invocation.system_prompt, prefix="claude-system-", suffix=".txt")


def _private_file_write(text: str, *, prefix: str, suffix: str) -> str:
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except BaseException:
        file_remove(path)
        raise
    return path


def file_remove(path: str | None) -> None:
    if path:
        with suppress(FileNotFoundError):
            os.unlink(path)


@contextmanager
def invocation_files(invocation: ClaudeInvocation) -> Iterator[tuple[str | None, str | None]]:
    """The invocation's MCP configuration and system prompt in private files, removed afterwards."""
    mcp_path = mcp_config_write(invocation)
    system_path = None
    try:
        system_path = system_prompt_write(invocation)
        yield mcp_path, system_path
    finally:
        file_remove(mcp_path)
        file_remove(system_path)
