"""The CLI as a process: started in its own process group, read without threads, stopped as a group.

- stdin is ``/dev/null`` unless a prompt is written to it: with an open stdin pipe the CLI waits for
  input that never comes.
- The CLI runs in its own session, hence its own process group, and every stop signal goes to the
  whole group. The CLI starts MCP servers and other helpers; killing only the CLI would leave them
  running, and a helper that inherited stdout would keep the pipe open so reading never ends.
- Output is read with a selector in the calling thread, stdout handed on as it arrives (with a cap
  on what is kept) and a rolling tail of stderr, so a runaway or stuck process can always be
  abandoned.
"""

from __future__ import annotations

import logging
import os
import select
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from contextlib import suppress
from typing import IO, Protocol

from claude_cli.invocation import NONESSENTIAL_TRAFFIC_VAR, RunnerConfig

logger = logging.getLogger(__name__)

STDERR_TAIL_BYTES = 8 * 1024
# How often the process state is checked while output is awaited.
WAIT_STEP = 0.05
_READ_CHUNK = 64 * 1024


class StartError(Exception):
    pass


def child_env(config: RunnerConfig) -> dict[str, str]:
    env = dict(os.environ if config.env is None else config.env)
    if config.disable_nonessential_traffic:
        # Without it every run makes a second upstream request for a session title.
        env.setdefault(NONESSENTIAL_TRAFFIC_VAR, "1")
    if config.tool_dirs:
        path = [entry for entry in env.get("PATH", os.defpath).split(os.pathsep) if entry]
        env["PATH"] = os.pathsep.join([*path, *(d for d in config.tool_dirs if d not in path)])
    return env


def resolve_binary(binary: str, env: Mapping[str, str]) -> str:
    if os.sep in binary or (os.altsep and os.altsep in binary):
        # Relative to the gateway's directory, not to the CLI's working directory.
        return os.path.abspath(binary)
    found = shutil.which(binary, path=env.get("PATH", os.defpath))
    if found is None:
        raise StartError(f"Claude CLI {binary!r} was not found on PATH or in node_tools/ (CLAUDE_BIN)")
    return found


def start(
    argv: list[str], config: RunnerConfig, env: dict[str, str], *, stdin: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    executable = resolve_binary(config.binary, env)
    if config.workdir is not None:
        try:
            config.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartError(
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
        raise StartError(f"Claude CLI {executable!r} does not exist (CLAUDE_BIN)") from exc
    except PermissionError as exc:
        raise StartError(f"Claude CLI {executable!r} is not executable (CLAUDE_BIN)") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartError(f"cannot start Claude CLI {executable!r} (CLAUDE_BIN): {reason}") from exc


class Process(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class ForeignProcess:
    """A CLI this process did not start and so cannot wait for: a warm CLI that the rq worker
    started and handed to this work horse. Its exit is watched through a pidfd, and its exit status
    read from /proc while it is a zombie: the worker reaps it only after the horse has exited."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self.returncode: int | None = None

    @classmethod
    def attach(cls, pid: int) -> ForeignProcess | None:
        try:
            return cls(pid, os.pidfd_open(pid))
        except ProcessLookupError:
            return None

    def poll(self) -> int | None:
        if self.returncode is None and self._exited(0):
            self.returncode = zombie_exit_status(self.pid)
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


def zombie_exit_status(pid: int) -> int:
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


# Reading and waiting


class StdoutSink(Protocol):
    """Where stdout goes as it is read (claude_cli.streamjson.StreamJsonParser)."""

    overflowed: bool

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> None: ...


class Streams:
    """stdout handed to a sink as it arrives and a rolling stderr tail, read without threads so
    reading can stop at any time. The sink bounds what it keeps (``overflowed`` past its cap).

    With ``stdin`` and ``data`` (the prompt) the data is written in the same loop, without blocking,
    and stdin closed once it is all written: a prompt larger than the pipe's buffer must not hold
    the run past its timeout while the CLI is not reading.
    """

    def __init__(
        self,
        stdout: IO[bytes],
        stderr: IO[bytes],
        sink: StdoutSink,
        *,
        stdin: IO[bytes] | None = None,
        data: bytes = b"",
    ) -> None:
        self._files: tuple[IO[bytes], ...] = (stdout, stderr) if stdin is None else (stdout, stderr, stdin)
        self._selector = selectors.DefaultSelector()
        self._selector.register(stdout, selectors.EVENT_READ, "stdout")
        self._selector.register(stderr, selectors.EVENT_READ, "stderr")
        self._input = memoryview(data)
        self._stdin = stdin
        if stdin is not None:
            os.set_blocking(stdin.fileno(), False)
            self._selector.register(stdin, selectors.EVENT_WRITE, "stdin")
        self.sink = sink
        self.stderr = bytearray()

    @property
    def overflowed(self) -> bool:
        return self.sink.overflowed

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
                if key.data == "stdout":
                    self.sink.finish()
            elif key.data == "stdout":
                # Past the sink's cap the data is dropped but still read: the writer never blocks.
                self.sink.feed(chunk)
            else:
                self.stderr += chunk
                del self.stderr[:-STDERR_TAIL_BYTES]

    def send_input(self) -> None:
        """Write what stdin takes now: the prompt goes out before anything else the run does."""
        if self._stdin is not None and self._input:
            self._write_input()

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


def wait_step(proc: Process, streams: Streams, timeout: float) -> None:
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


# Stopping the process group


def signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_group(proc: Process, pgid: int, streams: Streams, *, grace: float) -> None:
    """SIGTERM the group, SIGKILL it if anything is still alive ``grace`` seconds later, reap the CLI."""
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        wait_step(proc, streams, min(WAIT_STEP, deadline - time.monotonic()))
        if proc.poll() is not None and not group_alive(pgid):
            return
    logger.warning("Claude CLI (pid %s): group still alive %.1f s after SIGTERM; killing it", pgid, grace)
    signal_group(pgid, signal.SIGKILL)
    proc.wait()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return group_has_live_member(pgid)


def group_has_live_member(pgid: int) -> bool:
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


def kill_orphaned_group(pgid: int) -> None:
    """SIGKILL a CLI's process group whose supervisor died (the CLI runs in a session of its own,
    so it outlives the worker process that started it)."""
    signal_group(pgid, signal.SIGKILL)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process: not gone, and not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return True  # no /proc: the signal check is all there is
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")
