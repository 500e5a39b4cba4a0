"""A CLI started ahead of its prompt (``--input-format stream-json``), waiting on its stdin."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from claude_cli.invocation import (
    ClaudeInvocation,
    RunnerConfig,
    build_argv,
    file_remove,
    mcp_config_write,
    warm_key,
)
from claude_cli.process import ForeignProcess, StartError, child_env, signal_group, start


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
        foreign = ForeignProcess.attach(self.pid)
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
        file_remove(self.mcp_config_path)

    def discard(self, *, grace: float = 2.0) -> None:
        """Stop the CLI's whole group if anything in it still runs, reap the CLI (owner only), and
        remove its MCP configuration file. Safe to call more than once."""
        if self.is_owner:
            if self.proc.returncode is None:
                # Signalled before it is reaped: until then its pid (the group id) cannot be reused.
                signal_group(self.pid, signal.SIGTERM)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    signal_group(self.pid, signal.SIGKILL)
                    self.proc.wait()
            self.close_pipes()
        elif self.alive():
            # Not ours to reap: the owner does that once the work horse that holds it has exited.
            signal_group(self.pid, signal.SIGKILL)
        self.remove_config()


def start_warm(invocation: ClaudeInvocation, config: RunnerConfig) -> WarmProcess:
    """Start a CLI with ``invocation``'s options (its prompt is ignored) that waits for a prompt on
    stdin: in its own process group, in the working directory, with the MCP configuration in a 0600
    file that lives as long as the process. Raises WarmStartError if it cannot start.

    A system prompt is not one of its options: each job gives its own with its prompt
    (claude_cli.invocation.warm_input)."""
    invocation = replace(invocation, system_prompt=None)
    key = warm_key(invocation, config)
    env = child_env(config)
    if invocation.workdir:
        config = replace(config, workdir=Path(invocation.workdir))
    path = mcp_config_write(invocation)
    try:
        argv = build_argv(invocation, config, mcp_config_path=path)
        proc = start(argv, config, env, stdin=subprocess.PIPE)
    except StartError as exc:
        file_remove(path)
        raise WarmStartError(str(exc)) from exc
    return WarmProcess(key=key, proc=proc, started=time.monotonic(), mcp_config_path=path)
