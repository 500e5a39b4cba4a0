"""Warm CLIs owned by one process, kept per descriptor (model and MCP server names).

A CLI takes one prompt and is never reused: each query gets a fresh process, as with a cold start.
The pool takes one per job, retires it afterwards and starts replacements when asked to fill. A CLI
that died, or is older than ``max_age``, is replaced; a descriptor that no job used for ``max_age``
is no longer kept warm, and at most ``max_keys`` descriptors are.

What a descriptor's CLIs are started with comes from the ``invocation_for`` callable the owner
gives (queries.pool reads the MCP servers' configuration from the database; without one, only
descriptors with no MCP server are kept warm): this module knows nothing of routing or settings.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from claude_cli.invocation import ClaudeInvocation, RunnerConfig
from claude_cli.warm import WarmProcess, WarmStartError, start_warm

logger = logging.getLogger(__name__)

# How long a descriptor whose CLI would not start waits before the next try (a missing binary, say).
START_RETRY_DELAY = 30.0

# (model, MCP server names): what a worker knows of a job before it runs it.
Descriptor = tuple[str | None, tuple[str, ...]]
DEFAULT_DESCRIPTOR: Descriptor = (None, ())


# The CLI chosen for the job about to run (in this process, or in a work horse forked for it).
_handed: WarmProcess | None = None


def hand_over(warm: WarmProcess | None) -> None:
    global _handed
    _handed = warm


def handed() -> WarmProcess | None:
    return _handed


def default_invocation(descriptor: Descriptor) -> ClaudeInvocation | None:
    """A descriptor's invocation when it names no MCP server (servers need their configuration)."""
    model, servers = descriptor
    return None if servers else ClaudeInvocation(prompt="", model=model)


@dataclass
class _Slot:
    """The warm CLIs for one descriptor."""

    idle: list[WarmProcess] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)
    retry_at: float = 0.0


class CliPool:
    """Warm CLIs owned by this process: taken one per job, replaced after it, stopped at exit."""

    def __init__(
        self,
        *,
        config: RunnerConfig,
        size: int,
        max_age: float,
        max_keys: int,
        invocation_for: Callable[[Descriptor], ClaudeInvocation | None] = default_invocation,
    ) -> None:
        self.config = config
        self.size = size
        self.max_age = max_age
        self.max_keys = max_keys
        self._invocation_for = invocation_for
        self._slots: dict[Descriptor, _Slot] = {}
        self.started = 0
        _pools.add(self)

    def short(self) -> bool:
        """Whether a fill would start or replace anything."""
        now = time.monotonic()
        return any(
            (len(slot.idle) < self.size and now >= slot.retry_at)
            or any(w.age() > self.max_age for w in slot.idle)
            for slot in self._slots.values()
        )

    def descriptors(self) -> list[Descriptor]:
        """The descriptors kept warm (or waiting to be), the most recently used first."""
        return sorted(self._slots, key=lambda d: self._slots[d].last_used, reverse=True)

    def idle(self, descriptor: Descriptor | None = None) -> list[WarmProcess]:
        if descriptor is not None:
            slot = self._slots.get(descriptor)
            return list(slot.idle) if slot else []
        return [warm for slot in self._slots.values() for warm in slot.idle]

    def want(self, descriptor: Descriptor, *, ago: float = 0.0) -> bool:
        """Keep CLIs warm for ``descriptor`` from the next fill on: a job used it ``ago`` seconds ago
        (here, or in another process). True if it was not kept warm before."""
        used = time.monotonic() - max(ago, 0.0)
        slot = self._slots.get(descriptor)
        if slot is None:
            if ago > self.max_age:
                return False
            self._slots[descriptor] = _Slot(last_used=used)
            return True
        slot.last_used = max(slot.last_used, used)
        return False

    def take(self, descriptor: Descriptor) -> WarmProcess | None:
        """The oldest live, fresh CLI for ``descriptor`` (the likeliest to have finished starting)."""
        slot = self._slots.get(descriptor)
        if slot is None:
            return None
        slot.last_used = time.monotonic()
        while slot.idle:
            warm = slot.idle.pop(0)
            if warm.age() <= self.max_age and warm.alive():
                return warm
            self.retire(warm)
        return None

    def retire(self, warm: WarmProcess) -> None:
        """Stop (if it still runs) and reap a CLI: one a job has used, or one gone stale."""
        warm.discard(grace=min(self.config.kill_grace, 2.0))

    def fill(self) -> int:
        """Replace dead and stale CLIs, forget unused descriptors, start CLIs up to the size; returns
        how many were started."""
        now = time.monotonic()
        for slot in self._slots.values():
            for warm in [w for w in slot.idle if w.age() > self.max_age or not w.alive()]:
                slot.idle.remove(warm)
                self.retire(warm)
        self._forget_unused(now)
        started = 0
        for descriptor, slot in list(self._slots.items()):
            if len(slot.idle) >= self.size or now < slot.retry_at:
                continue
            invocation = self._invocation_for(descriptor)
            if invocation is None:
                # Its MCP servers cannot be had now (unknown, disabled): kept, and tried again later.
                slot.retry_at = now + START_RETRY_DELAY
                continue
            while len(slot.idle) < self.size:
                try:
                    slot.idle.append(start_warm(invocation, self.config))
                except WarmStartError as exc:
                    logger.warning("no warm Claude CLI: %s; retrying in %.0f s", exc, START_RETRY_DELAY)
                    slot.retry_at = now + START_RETRY_DELAY
                    break
                started += 1
        self.started += started
        return started

    def close(self, *, grace: float | None = None) -> None:
        """Stop every idle CLI, waiting at most ``grace`` seconds for each to exit (then SIGKILL)."""
        if grace is None:
            for descriptor in list(self._slots):
                self._drop(descriptor)
            return
        for slot in self._slots.values():
            for warm in slot.idle:
                warm.discard(grace=grace)
        self._slots.clear()

    def _forget_unused(self, now: float) -> None:
        for descriptor, slot in list(self._slots.items()):
            if now - slot.last_used > self.max_age:
                self._drop(descriptor)
        for descriptor in self.descriptors()[self.max_keys :]:
            self._drop(descriptor)

    def _drop(self, descriptor: Descriptor) -> None:
        slot = self._slots.pop(descriptor, None)
        for warm in slot.idle if slot else ():
            self.retire(warm)


_pools: weakref.WeakSet[CliPool] = weakref.WeakSet()


def _close_inherited_pipes() -> None:
    """In a forked child, drop the copies of the idle CLIs' pipes, except the one handed to it.

    A warm CLI exits after its prompt only once every copy of its stdin's write end is closed: a
    child that kept one (rq's scheduler is forked from a worker, for one) would hold it open forever.
    """
    for pool in list(_pools):
        for warm in pool.idle():
            if warm is not _handed:
                warm.close_pipes()


os.register_at_fork(after_in_child=_close_inherited_pipes)
