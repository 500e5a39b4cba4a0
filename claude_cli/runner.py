"""One CLI run: start it (or take a warm one), follow it to its end, and classify what it printed.

Every result, failure included, comes back as a :class:`ClaudeOutcome`; only an exception raised by
the caller's own callbacks (or a signal such as rq's job timeout) propagates, after the process group
has been killed.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from claude_cli import upstream as upstream_failures
from claude_cli.invocation import (
    ClaudeInvocation,
    ClaudeOutcome,
    CliErrorType,
    RunnerConfig,
    build_cold_argv,
    invocation_files,
    prompt_in_argv,
    warm_input,
)
from claude_cli.process import (
    WAIT_STEP,
    ForeignProcess,
    Process,
    StartError,
    Streams,
    child_env,
    group_alive,
    signal_group,
    start,
    stop_group,
    wait_step,
)
from claude_cli.streamjson import Event, StreamJsonParser
from claude_cli.upstream import UpstreamFailure
from claude_cli.warm import WarmProcess

logger = logging.getLogger(__name__)

# should_cancel() is called less often than the process is checked, since it may query the database.
_CANCEL_POLL_INTERVAL = 0.5
# Leftovers of a CLI that exited by itself get a short grace, not the full kill grace: the CLI is
# done, and whatever remains in its group is only holding the job up.
_LEFTOVER_GRACE = 1.0
# Once the group is gone only a process that left the group (setsid) can still hold the pipes.
_DRAIN_TIMEOUT = 1.0
# A CLI whose answer was taken (on_answer) has this long to exit before it is stopped: it only saves
# its session and stops its MCP servers.
_ANSWERED_EXIT_TIMEOUT = 10.0
_MESSAGE_LIMIT = 2000
_EXCERPT_LIMIT = 200


def run_claude(
    invocation: ClaudeInvocation,
    config: RunnerConfig,
    *,
    on_start: Callable[[int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    warm: WarmProcess | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_upstream: Callable[[UpstreamFailure], bool] | None = None,
    on_answer: Callable[[ClaudeOutcome], bool] | None = None,
) -> ClaudeOutcome:
    """Run the CLI once and report what happened.

    ``on_start(pid)`` is called as soon as the process exists; ``should_cancel()`` is polled about
    every 0.5 s and, when it returns True, the run is stopped like a timeout. ``on_event(event)``
    gets each text delta and tool start or end as the CLI prints it (claude_cli.streamjson).
    ``on_upstream(failure)`` gets each failed upstream request the CLI reports: before retrying it,
    and the one a failed result names (claude_cli.upstream); when it returns True the run is
    stopped (``upstream_unavailable``).

    ``on_answer(outcome)`` gets a successful outcome as soon as the CLI has printed a successful
    result if it still runs then (it saves its session and stops its MCP servers before it exits):
    exit code 0 presumed, stderr not read yet. When it returns True the answer is taken, and the run
    goes on only to see the CLI exit: no more cancellation checks, and the CLI is stopped if it has
    not exited within _ANSWERED_EXIT_TIMEOUT. The outcome returned is the run's own all the same (not
    ok if the CLI then exited non-zero or had to be stopped).

    An upstream 401 or 403 stops the run at once (``upstream_auth``): the CLI retries a 401 without
    end, and no retry with the same credentials can succeed.

    The prompt goes to the CLI's stdin as one stream-json ``user`` message, then stdin is closed.

    ``warm`` is a CLI started ahead of time for this invocation's options (see :func:`start_warm`):
    the prompt (after the system prompt, if any) is written to its stdin instead of starting a
    process. Timeouts, cancellation and the process-group cleanup are the same. If it exited before
    it could take the prompt, a cold start happens instead.
    """
    halt = _Halt(on_upstream)
    parser = StreamJsonParser(
        max_line_bytes=config.max_output_bytes, on_event=on_event, on_upstream=halt.seen
    )
    hooks = _Hooks(on_start, should_cancel, on_answer)
    if warm is not None:
        outcome = _run_warm(invocation, config, warm, parser, halt, hooks)
        if outcome is not None:
            return outcome
    with invocation_files(invocation) as (mcp_config_path, system_prompt_path):
        argv = build_cold_argv(
            invocation, config, mcp_config_path=mcp_config_path, system_prompt_path=system_prompt_path
        )
        return _run(invocation, config, argv, parser, halt, hooks)


def _run(
    invocation: ClaudeInvocation,
    config: RunnerConfig,
    argv: list[str],
    parser: StreamJsonParser,
    halt: _Halt,
    hooks: _Hooks,
) -> ClaudeOutcome:
    started = time.monotonic()
    env = child_env(config)
    if invocation.workdir:
        config = replace(config, workdir=Path(invocation.workdir))
    on_stdin = not prompt_in_argv(invocation)
    try:
        # A pipe, not a file: with --input-format stream-json the CLI reads its stdin only from a pipe.
        proc = start(argv, config, env, stdin=subprocess.PIPE if on_stdin else subprocess.DEVNULL)
    except StartError as exc:
        return _failure("cli_not_found", str(exc), started=started)
    assert proc.stdout is not None and proc.stderr is not None
    if on_stdin:
        assert proc.stdin is not None
        streams = Streams(
            proc.stdout, proc.stderr, parser, stdin=proc.stdin, data=invocation.user_message_line()
        )
    else:
        streams = Streams(proc.stdout, proc.stderr, parser)
    return _follow(proc, streams, config, started, halt, hooks)


def _run_warm(
    invocation: ClaudeInvocation,
    config: RunnerConfig,
    warm: WarmProcess,
    parser: StreamJsonParser,
    halt: _Halt,
    hooks: _Hooks,
) -> ClaudeOutcome | None:
    """Hand the prompt to a warm CLI and follow it as a cold run is followed; None if it was gone."""
    started = time.monotonic()
    proc: Process | None = warm.proc if warm.is_owner else ForeignProcess.attach(warm.pid)
    if proc is None or proc.poll() is not None:
        logger.warning("warm Claude CLI (pid %s) had exited before its prompt; starting one cold", warm.pid)
        warm.discard()
        return None
    assert warm.proc.stdin is not None and warm.proc.stdout is not None and warm.proc.stderr is not None
    streams = Streams(
        warm.proc.stdout, warm.proc.stderr, parser, stdin=warm.proc.stdin, data=warm_input(invocation)
    )
    try:
        return _follow(proc, streams, config, started, halt, hooks)
    finally:
        # The CLI is gone (or its group was killed): it no longer needs its MCP configuration.
        warm.remove_config()
        if isinstance(proc, ForeignProcess):
            proc.close()


def _follow(
    proc: Process,
    streams: Streams,
    config: RunnerConfig,
    started: float,
    halt: _Halt,
    hooks: _Hooks,
) -> ClaudeOutcome:
    """Supervise a started CLI until it exits or must be stopped, then classify what it printed."""
    pgid = proc.pid  # start_new_session makes the CLI its group's leader
    try:
        # The prompt first (a warm CLI answers as soon as it has it), then the caller's bookkeeping.
        streams.send_input()
        if hooks.on_start is not None:
            hooks.on_start(proc.pid)
        stop_reason = _supervise(proc, streams, config, hooks, started, halt)
        exited_by_itself = proc.poll() is not None
        if stop_reason is not None:
            stop_group(proc, pgid, streams, grace=config.kill_grace)
        elif group_alive(pgid):
            logger.info("Claude CLI (pid %s) exited; stopping what it left in its process group", pgid)
            stop_group(proc, pgid, streams, grace=min(config.kill_grace, _LEFTOVER_GRACE))
        if not streams.drain(_DRAIN_TIMEOUT):
            logger.warning("Claude CLI (pid %s): a process outside its group still holds its output", pgid)
        if stop_reason is None and streams.overflowed:
            # The CLI wrote past the cap and exited before the next check saw it.
            stop_reason = "overflow"
    except BaseException:
        signal_group(pgid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        streams.close()

    stderr = streams.stderr_text()
    duration = time.monotonic() - started
    returncode = proc.poll()
    parser = streams.sink
    assert isinstance(parser, StreamJsonParser)
    if stop_reason is not None:
        error_type, message = _stop_message(stop_reason, config, duration, halt.failure)
        exit_code = returncode if exited_by_itself else None
        return ClaudeOutcome(
            False, error_type, message, None, exit_code, stderr, duration, proc.pid, parser.upstream
        )

    assert returncode is not None
    data = parser.result if parser.result is not None else _not_a_result(parser.last_object)
    reported = upstream_failures.from_result(data, parser.limit_reset)
    if reported is not None:
        halt.seen(reported)  # the run is over; only the caller's count of failures is left to tell
    final = reported or parser.upstream
    failure = _classify(data, returncode, bytes(parser.head), stderr)
    if failure is None:
        return ClaudeOutcome(True, None, "", data, returncode, stderr, duration, proc.pid)
    error_type, message = failure
    return ClaudeOutcome(False, error_type, message, data, returncode, stderr, duration, proc.pid, final)


@dataclass(frozen=True)
class _Hooks:
    """run_claude's callbacks (see its docstring)."""

    on_start: Callable[[int], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    on_answer: Callable[[ClaudeOutcome], bool] | None = None


class _Halt:
    """Why a run must stop for its upstream: an authentication failure, or ``on_upstream`` said so."""

    def __init__(self, on_upstream: Callable[[UpstreamFailure], bool] | None) -> None:
        self._on_upstream = on_upstream
        self.failure: UpstreamFailure | None = None
        self.reason: _StopReason | None = None

    def seen(self, failure: UpstreamFailure) -> None:
        stop = self._on_upstream(failure) if self._on_upstream is not None else False
        if self.reason is not None:
            return
        if failure.kind == "auth":
            self.failure, self.reason = failure, "upstream_auth"
        elif stop:
            self.failure, self.reason = failure, "upstream_unavailable"


_StopReason = Literal["timeout", "cancelled", "overflow", "upstream_auth", "upstream_unavailable", "lingered"]


def _supervise(
    proc: Process,
    streams: Streams,
    config: RunnerConfig,
    hooks: _Hooks,
    started: float,
    halt: _Halt,
) -> _StopReason | None:
    """Read output until the CLI exits (None) or must be stopped (the reason)."""
    deadline = started + config.timeout
    next_cancel_check = time.monotonic() + _CANCEL_POLL_INTERVAL
    should_cancel, offered, answered = hooks.should_cancel, False, False
    parser = streams.sink
    assert isinstance(parser, StreamJsonParser)
    while True:
        wait_step(proc, streams, min(WAIT_STEP, deadline - time.monotonic()))
        # Overflow wins over a clean exit: the kept output is truncated and cannot be trusted.
        if streams.overflowed:
            return "overflow"
        if proc.poll() is not None:
            return None
        # Still running with its result printed (once): the answer need not wait for the exit.
        if not offered and parser.result is not None and hooks.on_answer is not None:
            offered = True
            if _answer_taken(proc, parser, started, hooks.on_answer):
                answered, should_cancel = True, None
                deadline = min(deadline, time.monotonic() + _ANSWERED_EXIT_TIMEOUT)
        if halt.reason is not None:
            return halt.reason
        now = time.monotonic()
        if now >= deadline:
            return "lingered" if answered else "timeout"
        if should_cancel is not None and now >= next_cancel_check:
            next_cancel_check = now + _CANCEL_POLL_INTERVAL
            if should_cancel():
                return "cancelled"


def _answer_taken(
    proc: Process, parser: StreamJsonParser, started: float, on_answer: Callable[[ClaudeOutcome], bool]
) -> bool:
    """Offer the result the CLI printed to ``on_answer`` if it is a success; whether it was taken."""
    data = parser.result
    if data is None or upstream_failures.from_result(data, parser.limit_reset) is not None:
        return False
    if _classify(data, 0, bytes(parser.head), "") is not None:
        return False
    return on_answer(ClaudeOutcome(True, None, "", data, 0, "", time.monotonic() - started, proc.pid))


def _failure(error_type: CliErrorType, message: str, *, started: float) -> ClaudeOutcome:
    return ClaudeOutcome(False, error_type, message, None, None, "", time.monotonic() - started, None)


def _stop_message(
    reason: _StopReason, config: RunnerConfig, duration: float, failure: UpstreamFailure | None
) -> tuple[CliErrorType, str]:
    if reason in ("upstream_auth", "upstream_unavailable"):
        error_type: CliErrorType = "upstream_auth" if reason == "upstream_auth" else "upstream_unavailable"
        what = failure.describe() if failure is not None else "the upstream failed"
        return error_type, f"Upstream: {what}; the Claude CLI was stopped instead of retrying"
    if reason == "timeout":
        return "cli_timeout", f"Claude CLI did not finish within {config.timeout:g} seconds and was stopped"
    if reason == "lingered":
        grace = _ANSWERED_EXIT_TIMEOUT
        return "cli_timeout", f"Claude CLI did not exit within {grace:g} s of its answer and was stopped"
    if reason == "cancelled":
        return "cancelled", f"cancelled after {duration:.1f} seconds; the Claude CLI was stopped"
    limit = config.max_output_bytes
    return "cli_output_invalid", f"Claude CLI output exceeded {limit} bytes and the process was stopped"


_STREAM_MESSAGE_TYPES = frozenset(("system", "assistant", "user", "stream_event"))


def _not_a_result(obj: object) -> dict[str, Any] | None:
    """What stands for the result when no ``result`` line came: the last JSON object printed if it
    is some other object (classified as not a result); None if it was an ordinary stream-json
    message, or no object at all (the exit code and stderr, or the output's excerpt, then tell)."""
    if isinstance(obj, dict) and obj.get("type") not in _STREAM_MESSAGE_TYPES:
        return obj
    return None


def _classify(
    data: dict[str, Any] | None, exit_code: int, stdout: bytes, stderr: str
) -> tuple[CliErrorType, str] | None:
    """None for a successful run, else the error type and message."""
    if data is None:
        if exit_code != 0:
            return "cli_error", _exit_message(exit_code, stderr)
        if not stdout.strip():
            return "cli_output_invalid", "Claude CLI exited 0 without printing anything"
        return "cli_output_invalid", f"Claude CLI printed no JSON result: {_excerpt(stdout)}"

    result = data.get("result")
    cli_text = result if isinstance(result, str) else ""
    subtype = data.get("subtype")
    api_status = data.get("api_error_status")
    if data.get("is_error") and upstream_failures.kind_for(api_status) == "auth" and api_status is not None:
        return "upstream_auth", _with_detail(
            f"Upstream not authorised (HTTP {api_status}): the credentials were refused", cli_text
        )
    if data.get("is_error"):
        # The CLI's own words ("Not logged in · Please run /login", "API Error: 400 ...") say it best.
        return "cli_error", _shorten(cli_text) or _exit_message(exit_code, stderr)
    if api_status is not None:
        return "cli_error", _with_detail(f"Claude CLI reported API error status {api_status}", cli_text)
    if subtype is not None and subtype != "success":
        return "cli_error", _with_detail(f"Claude CLI stopped with subtype {subtype!r}", cli_text)
    if exit_code != 0:
        return "cli_error", _exit_message(exit_code, stderr)
    if data.get("type") != "result" or data.get("is_error") is not False or subtype != "success":
        return "cli_output_invalid", f"Claude CLI printed JSON that is not a result: {_excerpt(stdout)}"
    return None


def _exit_message(exit_code: int, stderr: str) -> str:
    if exit_code < 0:
        try:
            how = f"was killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            how = f"was killed by signal {-exit_code}"
    else:
        how = f"exited with code {exit_code}"
    return _with_detail(f"Claude CLI {how}", stderr.strip()[-500:].strip())


def _with_detail(summary: str, detail: str) -> str:
    return _shorten(f"{summary}: {detail}" if detail else summary)


def _excerpt(stdout: bytes) -> str:
    text = " ".join(stdout.decode("utf-8", errors="replace").split())
    return repr(_shorten(text, _EXCERPT_LIMIT))


def _shorten(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
