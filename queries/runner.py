"""Runs the Claude Code CLI (``claude --print``) as a subprocess: the only place that starts it.

Two details matter for a process that must never hang a worker:

- stdin is ``/dev/null``. With an open stdin pipe the CLI waits for input that never comes.
- The CLI runs in its own session, hence its own process group, and every stop signal goes to the
  whole group. The CLI starts MCP servers and other helpers; killing only the CLI would leave them
  running, and a helper that inherited stdout would keep the pipe open so reading never ends. After
  the CLI exits, whatever is left in its group is stopped as well.

Output is read with a selector in the calling thread, with a cap on stdout and a rolling tail of
stderr, so a runaway or stuck process can always be abandoned. Every result, failure included, comes
back as a :class:`ClaudeOutcome`; only an exception raised by the caller's own callbacks (or a signal
such as rq's job timeout) propagates, after the process group has been killed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal, Protocol

logger = logging.getLogger(__name__)

CliErrorType = Literal["cli_timeout", "cli_error", "cli_output_invalid", "cli_not_found", "cancelled"]
CLI_ERROR_TYPES: tuple[CliErrorType, ...] = (
    "cli_timeout",
    "cli_error",
    "cli_output_invalid",
    "cli_not_found",
    "cancelled",
)

NONESSENTIAL_TRAFFIC_VAR = "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"
STDERR_TAIL_BYTES = 8 * 1024

# How often the process state is checked while output is awaited; should_cancel() is called less often
# since it may query the database.
_WAIT_STEP = 0.05
_CANCEL_POLL_INTERVAL = 0.2
# Leftovers of a CLI that exited by itself get a short grace, not the full kill grace: the CLI is
# done, and whatever remains in its group is only holding the job up.
_LEFTOVER_GRACE = 1.0
# Once the group is gone only a process that left the group (setsid) can still hold the pipes.
_DRAIN_TIMEOUT = 1.0
_READ_CHUNK = 64 * 1024
_MESSAGE_LIMIT = 2000
_EXCERPT_LIMIT = 200
_MASK = "***"
# stdio servers take secrets in env, http and sse servers in headers (Authorization).
_SECRET_SERVER_KEYS = ("env", "headers")


@dataclass(frozen=True)
class ClaudeInvocation:
    """One CLI run: the prompt verbatim, plus the model and MCP servers that routing chose."""

    prompt: str
    model: str | None = None
    mcp_config: dict[str, Any] | None = None
    allowed_tools: tuple[str, ...] = ()
    # Overrides RunnerConfig.workdir: the filesystem MCP server serves the CLI's working directory.
    workdir: str | None = None

    def __repr__(self) -> str:
        # MCP server env values and headers hold tokens and passwords; repr ends up in logs and tracebacks.
        return (
            f"ClaudeInvocation(prompt={self.prompt!r}, model={self.model!r}, "
            f"mcp_config={_mask_mcp_config(self.mcp_config)!r}, allowed_tools={self.allowed_tools!r}, "
            f"workdir={self.workdir!r})"
        )


@dataclass(frozen=True)
class RunnerConfig:
    binary: str
    timeout: float
    kill_grace: float = 5.0
    workdir: Path | None = None
    extra_args: tuple[str, ...] = ()
    max_output_bytes: int = 10 * 1024 * 1024
    # The environment holds ANTHROPIC_API_KEY: keep it out of repr.
    env: Mapping[str, str] | None = field(default=None, repr=False)
    disable_nonessential_traffic: bool = True

    @classmethod
    def from_settings(cls) -> RunnerConfig:
        from django.conf import settings

        workdir = getattr(settings, "CLAUDE_WORKDIR", None)
        return cls(
            binary=getattr(settings, "CLAUDE_BIN", "claude"),
            timeout=float(getattr(settings, "CLAUDE_TIMEOUT", 120.0)),
            kill_grace=float(getattr(settings, "CLAUDE_KILL_GRACE", 5.0)),
            workdir=Path(workdir) if workdir else None,
            extra_args=tuple(getattr(settings, "CLAUDE_EXTRA_ARGS", ())),
            max_output_bytes=int(getattr(settings, "CLAUDE_MAX_OUTPUT_BYTES", 10 * 1024 * 1024)),
            disable_nonessential_traffic=bool(getattr(settings, "CLAUDE_DISABLE_NONESSENTIAL_TRAFFIC", True)),
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


def build_argv(
    invocation: ClaudeInvocation, config: RunnerConfig, *, mcp_config_path: str | None = None
) -> list[str]:
    """The CLI's argv. The prompt always follows ``--``: ``--allowedTools`` and ``--mcp-config``
    take several values and would otherwise swallow it, and a prompt starting with ``-`` would be
    read as an option.

    ``--strict-mcp-config`` is always given: without it the CLI adds the MCP servers of the user's
    and the project's own configuration, so a query routed to no server would still get tools.
    The MCP configuration goes in as a file when ``mcp_config_path`` is given (run_claude does so:
    argv is readable by every local user through ps, and server env values hold secrets), else
    inline as JSON.
    """
    argv = [config.binary, "--print", "--output-format", "json"]
    if invocation.model:
        argv += ["--model", invocation.model]
    if invocation.mcp_config and invocation.mcp_config.get("mcpServers"):
        argv += ["--mcp-config", mcp_config_path or json.dumps(invocation.mcp_config)]
    argv.append("--strict-mcp-config")
    if invocation.allowed_tools:
        argv += ["--allowedTools", *invocation.allowed_tools]
    argv += [*config.extra_args, "--", invocation.prompt]
    return argv


def build_warm_argv(
    invocation: ClaudeInvocation, config: RunnerConfig, *, mcp_config_path: str | None = None
) -> list[str]:
    """The argv of a CLI started ahead of its prompt: the same options as :func:`build_argv`, but the
    prompt arrives later on stdin as one stream-json ``user`` message, so there is no ``--``."""
    argv = [config.binary, "--print", "--input-format", "stream-json", "--output-format", "stream-json"]
    argv.append("--verbose")  # the CLI refuses stream-json output in --print mode without it
    cold = build_argv(replace(invocation, prompt=""), config, mcp_config_path=mcp_config_path)
    return argv + cold[4:-2]  # everything between "--output-format json" and "-- <prompt>"


def warm_capable(config: RunnerConfig) -> bool:
    """Whether CLIs can be started ahead of time with this configuration: CLAUDE_EXTRA_ARGS that set
    the input or output format would contradict the stream-json that a warm CLI needs."""
    return not any(arg.split("=", 1)[0] in ("--input-format", "--output-format") for arg in config.extra_args)


def warm_key(invocation: ClaudeInvocation, config: RunnerConfig) -> str:
    """What a CLI started ahead of time must have been started with to answer this invocation: every
    argument and setting but the prompt. SHA-256, so MCP secrets never show in logs or process state."""
    workdir = invocation.workdir or (str(config.workdir) if config.workdir else None)
    fields = {
        "argv": build_warm_argv(invocation, config, mcp_config_path="-"),
        "mcp": invocation.mcp_config if (invocation.mcp_config or {}).get("mcpServers") else None,
        "workdir": workdir,
        "traffic": config.disable_nonessential_traffic,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def preview_argv(invocation: ClaudeInvocation, config: RunnerConfig) -> list[str]:
    """The argv a run would use, with the MCP configuration inline and its secrets masked."""
    masked = replace(invocation, mcp_config=_mask_mcp_config(invocation.mcp_config))
    return build_argv(masked, config)


def masked_mcp_config(mcp_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The MCP configuration with every env value and header masked."""
    return _mask_mcp_config(mcp_config)


def _write_mcp_config(invocation: ClaudeInvocation) -> str | None:
    """The invocation's MCP configuration in a new file only this user can read (mode 0600)."""
    if not (invocation.mcp_config and invocation.mcp_config.get("mcpServers")):
        return None
    fd, path = tempfile.mkstemp(prefix="claude-mcp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(invocation.mcp_config, handle)
    except BaseException:
        _remove(path)
        raise
    return path


def _remove(path: str | None) -> None:
    if path:
        with suppress(FileNotFoundError):
            os.unlink(path)


@contextmanager
def _mcp_config_file(invocation: ClaudeInvocation) -> Iterator[str | None]:
    """The invocation's MCP configuration in a private file, removed afterwards."""
    path = _write_mcp_config(invocation)
    try:
        yield path
    finally:
        _remove(path)


def run_claude(
    invocation: ClaudeInvocation,
    config: RunnerConfig,
    *,
    on_start: Callable[[int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    warm: WarmProcess | None = None,
) -> ClaudeOutcome:
    """Run the CLI once and report what happened.

    ``on_start(pid)`` is called as soon as the process exists; ``should_cancel()`` is polled about
    every 0.2 s and, when it returns True, the run is stopped like a timeout.

    ``warm`` is a CLI started ahead of time for this invocation's options (see :func:`start_warm`):
    the prompt is written to its stdin instead of starting a process. Timeouts, cancellation and the
    process-group cleanup are the same. If it exited before it could take the prompt, a cold start
    happens instead.
    """
    if warm is not None:
        outcome = _run_warm(invocation, config, warm, on_start=on_start, should_cancel=should_cancel)
        if outcome is not None:
            return outcome
    with _mcp_config_file(invocation) as mcp_config_path:
        return _run(invocation, config, mcp_config_path, on_start=on_start, should_cancel=should_cancel)


def _run(
    invocation: ClaudeInvocation,
    config: RunnerConfig,
    mcp_config_path: str | None,
    *,
    on_start: Callable[[int], None] | None,
    should_cancel: Callable[[], bool] | None,
) -> ClaudeOutcome:
    started = time.monotonic()
    env = _child_env(config)
    if invocation.workdir:
        config = replace(config, workdir=Path(invocation.workdir))
    try:
        proc = _start(build_argv(invocation, config, mcp_config_path=mcp_config_path), config, env)
    except _StartError as exc:
        return _failure("cli_not_found", str(exc), started=started)
    assert proc.stdout is not None and proc.stderr is not None
    streams = _Streams(proc.stdout, proc.stderr, config.max_output_bytes)
    return _follow(proc, streams, config, started, on_start=on_start, should_cancel=should_cancel)


def _run_warm(
    invocation: ClaudeInvocation,
    config: RunnerConfig,
    warm: WarmProcess,
    *,
    on_start: Callable[[int], None] | None,
    should_cancel: Callable[[], bool] | None,
) -> ClaudeOutcome | None:
    """Hand the prompt to a warm CLI and follow it as a cold run is followed; None if it was gone."""
    started = time.monotonic()
    proc: _Process | None = warm.proc if warm.is_owner else _ForeignProcess.attach(warm.pid)
    if proc is None or proc.poll() is not None:
        logger.warning("warm Claude CLI (pid %s) had exited before its prompt; starting one cold", warm.pid)
        warm.discard()
        return None
    assert warm.proc.stdin is not None and warm.proc.stdout is not None and warm.proc.stderr is not None
    message = {"type": "user", "message": {"role": "user", "content": invocation.prompt}}
    line = (json.dumps(message, ensure_ascii=False) + "\n").encode()
    streams = _Streams(
        warm.proc.stdout, warm.proc.stderr, config.max_output_bytes, stdin=warm.proc.stdin, data=line
    )
    try:
        return _follow(proc, streams, config, started, on_start=on_start, should_cancel=should_cancel)
    finally:
        # The CLI is gone (or its group was killed): it no longer needs its MCP configuration.
        warm.remove_config()
        if isinstance(proc, _ForeignProcess):
            proc.close()


def _follow(
    proc: _Process,
    streams: _Streams,
    config: RunnerConfig,
    started: float,
    *,
    on_start: Callable[[int], None] | None,
    should_cancel: Callable[[], bool] | None,
) -> ClaudeOutcome:
    """Supervise a started CLI until it exits or must be stopped, then classify what it printed."""
    pgid = proc.pid  # start_new_session makes the CLI its group's leader
    try:
        if on_start is not None:
            on_start(proc.pid)
        stop_reason = _supervise(proc, streams, config, should_cancel, started)
        exited_by_itself = proc.poll() is not None
        if stop_reason is not None:
            _stop_group(proc, pgid, streams, grace=config.kill_grace)
        elif _group_alive(pgid):
            logger.info("Claude CLI (pid %s) exited; stopping what it left in its process group", pgid)
            _stop_group(proc, pgid, streams, grace=min(config.kill_grace, _LEFTOVER_GRACE))
        if not streams.drain(_DRAIN_TIMEOUT):
            logger.warning("Claude CLI (pid %s): a process outside its group still holds its output", pgid)
        if stop_reason is None and streams.overflowed:
            # The CLI wrote past the cap and exited before the next check saw it.
            stop_reason = "overflow"
    except BaseException:
        _signal_group(pgid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        streams.close()

    stderr = streams.stderr_text()
    duration = time.monotonic() - started
    returncode = proc.poll()
    if stop_reason is not None:
        error_type, message = _stop_message(stop_reason, config, duration)
        exit_code = returncode if exited_by_itself else None
        return ClaudeOutcome(False, error_type, message, None, exit_code, stderr, duration, proc.pid)

    assert returncode is not None
    data = _parse_result(bytes(streams.stdout))
    failure = _classify(data, returncode, bytes(streams.stdout), stderr)
    if failure is None:
        return ClaudeOutcome(True, None, "", data, returncode, stderr, duration, proc.pid)
    error_type, message = failure
    return ClaudeOutcome(False, error_type, message, data, returncode, stderr, duration, proc.pid)


# Warm processes


class WarmStartError(Exception):
    """A CLI could not be started ahead of time (the binary is missing, the workdir unusable...)."""


@dataclass(eq=False)
class WarmProcess:
    """A CLI started ahead of time (``--input-format stream-json``), waiting on its stdin for a prompt.

    It takes one prompt and is never reused. The process that started it (its owner) reaps it. A
    process forked from the owner (an rq work horse) may run it: it inherited the pipes, and watches
    the exit through a pidfd; the owner closes its own copies of the pipes once it has handed the CLI
    over, so that the CLI sees end of file when the horse closes stdin.
    """

    key: str
    proc: subprocess.Popen[bytes] = field(repr=False)
    started: float
    mcp_config_path: str | None = field(default=None, repr=False)
    owner_pid: int = field(default_factory=os.getpid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def is_owner(self) -> bool:
        return os.getpid() == self.owner_pid

    def age(self) -> float:
        return time.monotonic() - self.started

    def alive(self) -> bool:
        if self.is_owner:
            return self.proc.poll() is None
        foreign = _ForeignProcess.attach(self.pid)
        if foreign is None:
            return False
        try:
            return foreign.poll() is None
        finally:
            foreign.close()

    def close_pipes(self) -> None:
        """Drop this process's copies of the CLI's pipes (the owner, once a work horse has it)."""
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with suppress(OSError):
                    pipe.close()

    def remove_config(self) -> None:
        _remove(self.mcp_config_path)

    def discard(self, *, grace: float = 2.0) -> None:
        """Stop the CLI's whole group if anything in it still runs, reap the CLI (owner only), and
        remove its MCP configuration file. Safe to call more than once."""
        if self.is_owner:
            if self.proc.returncode is None:
                # Signalled before it is reaped: until then its pid (the group id) cannot be reused.
                _signal_group(self.pid, signal.SIGTERM)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    _signal_group(self.pid, signal.SIGKILL)
                    self.proc.wait()
            self.close_pipes()
        elif self.alive():
            # Not ours to reap: the owner does that once the work horse that holds it has exited.
            _signal_group(self.pid, signal.SIGKILL)
        self.remove_config()


def start_warm(invocation: ClaudeInvocation, config: RunnerConfig) -> WarmProcess:
    """Start a CLI with ``invocation``'s options (its prompt is ignored) that waits for a prompt on
    stdin: in its own process group, in the working directory, with the MCP configuration in a 0600
    file that lives as long as the process. Raises WarmStartError if it cannot start."""
    key = warm_key(invocation, config)
    env = _child_env(config)
    if invocation.workdir:
        config = replace(config, workdir=Path(invocation.workdir))
    path = _write_mcp_config(invocation)
    try:
        argv = build_warm_argv(invocation, config, mcp_config_path=path)
        proc = _start(argv, config, env, stdin=subprocess.PIPE)
    except _StartError as exc:
        _remove(path)
        raise WarmStartError(str(exc)) from exc
    return WarmProcess(key=key, proc=proc, started=time.monotonic(), mcp_config_path=path)


class _Process(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class _ForeignProcess:
    """A CLI this process did not start and so cannot wait for: a warm CLI that the rq worker
    started and handed to this work horse. Its exit is watched through a pidfd, and its exit status
    read from /proc while it is a zombie: the worker reaps it only after the horse has exited."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self.returncode: int | None = None

    @classmethod
    def attach(cls, pid: int) -> _ForeignProcess | None:
        try:
            return cls(pid, os.pidfd_open(pid))
        except ProcessLookupError:
            return None

    def poll(self) -> int | None:
        if self.returncode is None and self._exited(0):
            self.returncode = _zombie_exit_status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is None:
            if not self._exited(timeout):
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            self.poll()
        assert self.returncode is not None
        return self.returncode

    def close(self) -> None:
        with suppress(OSError):
            os.close(self._pidfd)

    def _exited(self, timeout: float | None) -> bool:
        readable, _, _ = select.select([self._pidfd], [], [], timeout)
        return bool(readable)


def _zombie_exit_status(pid: int) -> int:
    """A dead process's exit status as Popen.returncode gives it (negative: killed by that signal),
    from field 52 of /proc/PID/stat, which Linux keeps until the process is reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        status = int(stat[stat.rfind(b")") + 2 :].split()[49])
    except (OSError, IndexError, ValueError):
        # Reaped already: only the owner does that, after this process is done, so this is unexpected.
        logger.warning("Claude CLI (pid %s): exit status unavailable; taking it as 0", pid)
        return 0
    if status & 0x7F:
        return -(status & 0x7F)
    return (status >> 8) & 0xFF


# Starting


class _StartError(Exception):
    pass


def _child_env(config: RunnerConfig) -> dict[str, str]:
    env = dict(os.environ if config.env is None else config.env)
    if config.disable_nonessential_traffic:
        # Without it every run makes a second upstream request for a session title.
        env.setdefault(NONESSENTIAL_TRAFFIC_VAR, "1")
    return env


def _resolve_binary(binary: str, env: Mapping[str, str]) -> str:
    if os.sep in binary or (os.altsep and os.altsep in binary):
        # Relative to the gateway's directory, not to the CLI's working directory.
        return os.path.abspath(binary)
    found = shutil.which(binary, path=env.get("PATH", os.defpath))
    if found is None:
        raise _StartError(f"Claude CLI {binary!r} was not found on PATH (CLAUDE_BIN)")
    return found


def _start(
    argv: list[str], config: RunnerConfig, env: dict[str, str], *, stdin: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    executable = _resolve_binary(config.binary, env)
    if config.workdir is not None:
        try:
            config.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _StartError(
                f"cannot create the Claude CLI working directory {str(config.workdir)!r} "
                f"(CLAUDE_WORKDIR): {exc.strerror or exc}"
            ) from exc
    try:
        return subprocess.Popen(
            [executable, *argv[1:]],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=config.workdir,
            env=env,
            start_new_session=True,
            bufsize=0,
        )
    except FileNotFoundError as exc:
        raise _StartError(f"Claude CLI {executable!r} does not exist (CLAUDE_BIN)") from exc
    except PermissionError as exc:
        raise _StartError(f"Claude CLI {executable!r} is not executable (CLAUDE_BIN)") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise _StartError(f"cannot start Claude CLI {executable!r} (CLAUDE_BIN): {reason}") from exc


# Reading and waiting


class _Streams:
    """stdout (capped) and a rolling stderr tail, read without threads so reading can stop at any time.

    With ``stdin`` and ``data`` (a warm CLI's prompt) the data is written in the same loop, without
    blocking, and stdin closed once it is all written: a prompt larger than the pipe's buffer must
    not hold the run past its timeout while the CLI is not reading.
    """

    def __init__(
        self,
        stdout: IO[bytes],
        stderr: IO[bytes],
        max_stdout: int,
        *,
        stdin: IO[bytes] | None = None,
        data: bytes = b"",
    ) -> None:
        self._files: tuple[IO[bytes], ...] = (stdout, stderr) if stdin is None else (stdout, stderr, stdin)
        self._selector = selectors.DefaultSelector()
        self._selector.register(stdout, selectors.EVENT_READ, "stdout")
        self._selector.register(stderr, selectors.EVENT_READ, "stderr")
        self._max_stdout = max_stdout
        self._input = memoryview(data)
        self._stdin = stdin
        if stdin is not None:
            os.set_blocking(stdin.fileno(), False)
            self._selector.register(stdin, selectors.EVENT_WRITE, "stdin")
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.overflowed = False

    @property
    def is_open(self) -> bool:
        """Whether stdout or stderr can still deliver output (a pending prompt does not count)."""
        return any(key.data != "stdin" for key in self._selector.get_map().values())

    def pump(self, timeout: float) -> None:
        """Read whatever arrives within ``timeout`` seconds (and write what stdin will take)."""
        for key, _ in self._selector.select(max(timeout, 0.0)):
            if key.data == "stdin":
                self._write_input()
                continue
            chunk = os.read(key.fd, _READ_CHUNK)
            if not chunk:
                self._selector.unregister(key.fileobj)
            elif key.data == "stdout":
                self._take_stdout(chunk)
            else:
                self.stderr += chunk
                del self.stderr[:-STDERR_TAIL_BYTES]

    def _write_input(self) -> None:
        assert self._stdin is not None
        try:
            written = os.write(self._stdin.fileno(), self._input[:_READ_CHUNK])
        except BlockingIOError:
            return
        except OSError:
            # The CLI is gone (EPIPE): its exit status and output tell what happened.
            written = len(self._input)
        self._input = self._input[written:]
        if not self._input:
            self._selector.unregister(self._stdin)
            # End of file tells the CLI that this one message is all it gets, so it exits after it.
            self._stdin.close()

    def drain(self, timeout: float) -> bool:
        """Read until both streams reach end of file; False if they are still open after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.is_open:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.pump(remaining)
        return True

    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")

    def close(self) -> None:
        self._selector.close()
        for file in self._files:
            with suppress(OSError):
                file.close()

    def _take_stdout(self, chunk: bytes) -> None:
        # Past the cap the data is dropped but still read, so the writer never blocks on a full pipe.
        room = self._max_stdout - len(self.stdout)
        if len(chunk) > room:
            self.overflowed = True
        if room > 0:
            self.stdout += chunk[:room]


def _wait_step(proc: _Process, streams: _Streams, timeout: float) -> None:
    """Read output for up to ``timeout`` seconds; once the pipes are closed, wait for the exit instead.

    The pipes reach end of file a moment before the process can be reaped, so sleeping instead of
    waiting would add a poll interval to every run."""
    timeout = max(timeout, 0.0)
    if streams.is_open:
        streams.pump(timeout)
    elif proc.poll() is None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    else:
        time.sleep(timeout)


_StopReason = Literal["timeout", "cancelled", "overflow"]


def _supervise(
    proc: _Process,
    streams: _Streams,
    config: RunnerConfig,
    should_cancel: Callable[[], bool] | None,
    started: float,
) -> _StopReason | None:
    """Read output until the CLI exits (None) or must be stopped (the reason)."""
    deadline = started + config.timeout
    next_cancel_check = time.monotonic() + _CANCEL_POLL_INTERVAL
    while True:
        _wait_step(proc, streams, min(_WAIT_STEP, deadline - time.monotonic()))
        # Overflow wins over a clean exit: the kept output is truncated and cannot be trusted.
        if streams.overflowed:
            return "overflow"
        if proc.poll() is not None:
            return None
        now = time.monotonic()
        if now >= deadline:
            return "timeout"
        if should_cancel is not None and now >= next_cancel_check:
            next_cancel_check = now + _CANCEL_POLL_INTERVAL
            if should_cancel():
                return "cancelled"


# Stopping the process group


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _stop_group(proc: _Process, pgid: int, streams: _Streams, *, grace: float) -> None:
    """SIGTERM the group, SIGKILL it if anything is still alive ``grace`` seconds later, reap the CLI."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _wait_step(proc, streams, min(_WAIT_STEP, deadline - time.monotonic()))
        if proc.poll() is not None and not _group_alive(pgid):
            return
    logger.warning("Claude CLI (pid %s): group still alive %.1f s after SIGTERM; killing it", pgid, grace)
    _signal_group(pgid, signal.SIGKILL)
    proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _group_has_live_member(pgid)


def _group_has_live_member(pgid: int) -> bool:
    """Whether a group member is more than a zombie.

    Orphaned members are reparented to init (or a subreaper) and stay zombies until it reaps them;
    they hold nothing open, so waiting for them would only waste the grace period. Without /proc,
    every member counts as alive.
    """
    try:
        entries = os.scandir("/proc")
    except OSError:
        return True
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    return False


# Outcomes


def _failure(error_type: CliErrorType, message: str, *, started: float) -> ClaudeOutcome:
    return ClaudeOutcome(False, error_type, message, None, None, "", time.monotonic() - started, None)


def _stop_message(reason: _StopReason, config: RunnerConfig, duration: float) -> tuple[CliErrorType, str]:
    if reason == "timeout":
        return "cli_timeout", f"Claude CLI did not finish within {config.timeout:g} seconds and was stopped"
    if reason == "cancelled":
        return "cancelled", f"cancelled after {duration:.1f} seconds; the Claude CLI was stopped"
    limit = config.max_output_bytes
    return "cli_output_invalid", f"Claude CLI output exceeded {limit} bytes and the process was stopped"


def _parse_result(stdout: bytes) -> dict[str, Any] | None:
    """The result object: the whole output, or else the last line that is a ``"type": "result"`` object
    (as with ``--output-format stream-json`` in CLAUDE_EXTRA_ARGS)."""
    text = stdout.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        whole = json.loads(text)
    except ValueError:
        pass
    else:
        return whole if isinstance(whole, dict) else None
    for line in reversed(text.splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("type") == "result":
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

    cli_text = data.get("result") if isinstance(data.get("result"), str) else ""
    subtype = data.get("subtype")
    api_status = data.get("api_error_status")
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


def _mask_mcp_config(config: dict[str, Any] | None) -> dict[str, Any] | None:
    servers = config.get("mcpServers") if isinstance(config, dict) else None
    if not isinstance(servers, dict):
        return config
    return {**config, "mcpServers": {name: _mask_server(server) for name, server in servers.items()}}


def _mask_server(server: Any) -> Any:
    if not isinstance(server, dict):
        return server
    masked = dict(server)
    for key in _SECRET_SERVER_KEYS:
        if isinstance(masked.get(key), dict):
            masked[key] = dict.fromkeys(masked[key], _MASK)
    return masked


def kill_orphaned_group(pgid: int) -> None:
    """SIGKILL a CLI's process group whose supervisor died (the CLI runs in a session of its own,
    so it outlives the worker process that started it)."""
    _signal_group(pgid, signal.SIGKILL)
