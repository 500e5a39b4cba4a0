"""The warm CLI pool: Claude CLIs started ahead of time, so that a job does not wait for one to start.

A cold CLI spends about half a second starting (node, the CLI's own set-up, its MCP servers) before
it sends anything upstream. Started with ``--input-format stream-json`` it does all of that and then
waits on its stdin; a prompt written there is answered about 0.1 s later. How it fits the rq worker:

- The pool lives in the long-lived rq worker process (:class:`CliPoolWorkerMixin`). It is keyed by
  the job's model and MCP server names, which travel in the rq job's meta (:func:`job_meta`), so
  choosing a CLI costs no database query on the way to the job.
- For each job the worker takes a CLI for that key and hands it over (:func:`hand_over`); the job
  (:func:`pool_claim`) writes the prompt, closes stdin (the CLI exits after one message once stdin is
  at end of file) and follows the CLI exactly as a cold one: timeout, cancellation, killing the
  process group. Before that it checks that the CLI was started with precisely the options the job
  needs (claude_cli.invocation.warm_key: every argument, the MCP servers' configuration as it is
  now, the working directory); if not, say an operator edited an MCP server since, it kills it and
  starts one cold.
- The gateway's worker runs jobs in its own process (queries.worker.GatewayInProcessWorker). With
  WORKER_FORK the job runs in a forked work horse instead: the worker closes its own copies of the
  CLI's pipes after the fork, the horse uses the ones it inherited and watches the CLI's exit through
  a pidfd, reading its exit status from /proc, and any other child forked from the worker (rq's
  scheduler) drops its copies at once (claude_cli.pool).
- The worker reaps the CLI after the job and starts a replacement before it waits for the next job.
  Not beside the job: on a busy host a node start-up competing with the job's own CLI would slow the
  answer being waited for. And not while jobs are queued: a warm CLI spends a little more CPU than a
  cold run (about 6%: it idles, and speaks stream-json), and a queued job would take the replacement
  before it had finished starting anyway, so under a backlog jobs start cold and the machine's CPU
  goes to answers. The pool fills again once the queues are empty and the CLIs still answering have
  finished (or after REFILL_DEFER_MAX), so a burst's last jobs do not share the CPU with start-ups.
- A CLI takes one prompt and is never reused: each query gets a fresh process, as with a cold start.
  A CLI that died, or is older than CLAUDE_POOL_MAX_AGE, is replaced. A key that no job used for
  CLAUDE_POOL_MAX_AGE is no longer kept warm, and at most CLAUDE_POOL_KEYS keys are.
- With CLAUDE_POOL_SIZE=0, for a job whose key has no warm CLI, or with CLAUDE_EXTRA_ARGS that set
  the CLI's input or output format, the job starts its CLI cold as before.

Hits and misses are counted as ``claude_cli_pool_hits_total`` and ``claude_cli_pool_misses_total``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import connections

from claude_cli.invocation import ClaudeInvocation, RunnerConfig, warm_capable, warm_key
from claude_cli.pool import DEFAULT_DESCRIPTOR, CliPool, Descriptor, hand_over, handed
from claude_cli.warm import WarmProcess
from core import metrics
from routing.services import GENERAL_INTENT, McpUnavailable, Route, route_for_job

logger = logging.getLogger(__name__)

RUN_JOB = "queries.tasks.run_job"
META_KEY = "cli"
# The model and server sets jobs ran with lately, each with its last use (a sorted set of
# ``[model, [servers]]`` JSON by Unix time): every worker keeps CLIs warm for them, not only the
# ones whose jobs found none. Redis may lose it: workers go on with what they know.
DESCRIPTORS_KEY = "pool:descriptors"


def runner_config() -> RunnerConfig:
    """The runner's configuration from the CLAUDE_* settings."""
    return RunnerConfig.from_settings(settings)


def job_meta(*, model: str | None, servers: list[str], resume: bool = False) -> dict[str, Any]:
    """What the rq job carries for the worker to pick a warm CLI: names only, never configuration.

    A job that resumes a session takes none: its CLI starts cold, with ``--resume``."""
    entry: dict[str, Any] = {"model": model or None, "servers": sorted(servers)}
    if resume:
        entry["resume"] = True
    return {META_KEY: entry}


def descriptor_from_meta(meta: dict[str, Any] | None) -> Descriptor | None:
    entry = (meta or {}).get(META_KEY)
    if not isinstance(entry, dict) or entry.get("resume"):
        return None
    model, servers = entry.get("model"), entry.get("servers")
    if not (model is None or isinstance(model, str)) or not isinstance(servers, list):
        return None
    return (model or None, tuple(sorted(str(name) for name in servers)))


def invocation_for(
    *,
    prompt: str,
    model: str | None,
    route: Route,
    content: list[dict[str, Any]] | None = None,
    system_prompt: str | None = None,
) -> ClaudeInvocation:
    """The CLI invocation for a query routed to ``route``: the one place it is put together, so a
    CLI started ahead of time has exactly the options the job will need (a system prompt is an
    option: a job with one starts its CLI cold)."""
    return ClaudeInvocation(
        prompt=prompt,
        model=model or None,
        mcp_config=route.mcp_config(),
        allowed_tools=route.allowed_tools(),
        workdir=route.workdir,
        content=content,
        system_prompt=system_prompt,
    )


def pool_enabled() -> bool:
    return settings.CLAUDE_POOL_SIZE > 0 and warm_capable(runner_config())


def pool_claim(*, invocation: ClaudeInvocation, config: RunnerConfig) -> WarmProcess | None:
    """The warm CLI to run ``invocation`` with, or None to start one cold. Counts a pool hit or miss.

    A CLI handed over by the worker is used only if it was started with exactly the options this
    invocation needs; otherwise it is killed (the worker reaps it and starts a current one).
    """
    warm = handed()
    hand_over(None)
    if warm is not None and warm.key == warm_key(invocation, config):
        metrics.cli_pool_counted(hit=True)
        return warm
    if warm is not None:
        logger.info("the warm Claude CLI has other options (an MCP server changed?); starting one cold")
        warm.discard()
    if warm is not None or pool_enabled():
        metrics.cli_pool_counted(hit=False)
    return None


def pool_from_settings() -> CliPool | None:
    """The pool the settings ask for, or None when pooling is off or cannot work."""
    config = runner_config()
    if settings.CLAUDE_POOL_SIZE <= 0:
        return None
    if not warm_capable(config):
        logger.warning("CLAUDE_EXTRA_ARGS sets the CLI's input or output format: no warm CLI pool")
        return None
    return CliPool(
        config=config,
        size=settings.CLAUDE_POOL_SIZE,
        max_age=settings.CLAUDE_POOL_MAX_AGE,
        max_keys=settings.CLAUDE_POOL_KEYS,
        invocation_for=_descriptor_invocation,
    )


def _descriptor_invocation(descriptor: Descriptor) -> ClaudeInvocation | None:
    """The options a job with this descriptor runs with, the MCP servers' configuration as now."""
    model, servers = descriptor
    if not servers:
        return invocation_for(prompt="", model=model, route=Route())
    try:
        route = route_for_job(intent=GENERAL_INTENT, server_names=list(servers))
    except McpUnavailable:
        return None
    finally:
        # This process forks work horses: it must not hold a connection they would inherit.
        connections.close_all()
    return invocation_for(prompt="", model=model, route=route)


# Longest a refill waits for other CLIs to finish (CliPoolWorkerMixin._cli_pool_backlog).
REFILL_DEFER_MAX = 10.0


class CliPoolWorkerMixin:
    """For an rq forking worker: keep a :class:`CliPool` and hand each job a warm CLI (module doc)."""

    _cli_pool: CliPool | None = None
    _cli_pool_checked: float = 0.0
    _cli_pool_deferred_since: float | None = None

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)  # type: ignore[misc]
        self._cli_pool = pool_from_settings()
        if self._cli_pool is not None:
            # Queries with no model and no MCP server are the common case: warm those from the start.
            self._cli_pool.want(DEFAULT_DESCRIPTOR)
            self._cli_pool_fill()

    def execute_job(self, job: Any, queue: Any) -> None:
        with self.cli_pool_job(job):
            super().execute_job(job, queue)  # type: ignore[misc]

    @contextmanager
    def cli_pool_job(self, job: Any) -> Iterator[None]:
        """Around one job: hand it a warm CLI for its model and servers, reap that CLI afterwards."""
        pool = self._cli_pool
        descriptor = descriptor_from_meta(job.meta) if pool is not None and job.func_name == RUN_JOB else None
        warm = pool.take(descriptor) if pool is not None and descriptor is not None else None
        hand_over(warm)
        try:
            yield
        finally:
            hand_over(None)
            if pool is not None:
                if warm is not None:
                    pool.retire(warm)
                if descriptor is not None:
                    pool.want(descriptor)
                    self._cli_pool_share(descriptor)

    def _cli_pool_share(self, descriptor: Descriptor) -> None:
        """Tell the other workers a job used ``descriptor``: they keep a CLI warm for it too, so a
        new model or server set costs cold starts until their next wake-up, not one on each."""
        assert self._cli_pool is not None
        model, servers = descriptor
        now = time.time()
        try:
            pipe = self.connection.pipeline(transaction=False)  # type: ignore[attr-defined]
            pipe.zadd(DESCRIPTORS_KEY, {json.dumps([model, list(servers)]): now})
            pipe.zremrangebyscore(DESCRIPTORS_KEY, "-inf", now - self._cli_pool.max_age)
            pipe.execute()
        except Exception:
            logger.warning("could not share the warm CLI pool's model and server set", exc_info=True)

    def _cli_pool_adopt(self) -> bool:
        """Keep CLIs warm for the sets other workers' jobs used lately (the most recent first);
        True if that added one this worker did not keep."""
        pool = self._cli_pool
        if pool is None:
            return False
        try:
            members = self.connection.zrevrangebyscore(  # type: ignore[attr-defined]
                DESCRIPTORS_KEY, "+inf", time.time() - pool.max_age, start=0, num=pool.max_keys
            )
        except Exception:
            # Asked on every wake-up: a Redis outage is told by the outage handling, once.
            logger.debug("could not read the warm CLI pool's shared sets", exc_info=True)
            return False
        added = False
        for member in members:
            try:
                model, servers = json.loads(member)
                descriptor: Descriptor = (model or None, tuple(sorted(str(name) for name in servers)))
            except (TypeError, ValueError):
                continue
            added = pool.adopt(descriptor) or added
        return added

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        # Refill before waiting for work, unless work is waiting or CLIs are answering (module doc).
        pool = self._cli_pool
        self._cli_pool_adopt()
        if pool is not None and pool.short():
            if not self._cli_pool_backlog():
                self._cli_pool_fill()
        else:
            self._cli_pool_deferred_since = None
        if self._cli_pool_deferred_since is not None and timeout is not None:
            timeout = 1  # look again soon (until the next job: rq keeps this timeout while it waits)
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)  # type: ignore[misc]

    def fork_work_horse(self, job: Any, queue: Any) -> None:
        super().fork_work_horse(job, queue)  # type: ignore[misc]
        # Only the worker gets here (the horse exits inside): with its copies of the pipes closed the
        # CLI sees end of file as soon as the horse closes stdin, and nothing here can write to it.
        warm = handed()
        if warm is not None:
            warm.close_pipes()

    @property
    def dequeue_timeout(self) -> int:
        timeout = super().dequeue_timeout  # type: ignore[misc]
        if self._cli_pool is None:
            return timeout
        # An idle worker wakes often enough to replace CLIs before they go stale.
        return max(1, min(timeout, int(self._cli_pool.max_age / 4)))

    @property
    def should_run_maintenance_tasks(self) -> bool:
        # rq asks on each wake-up of an idle worker (every dequeue_timeout): a set another worker's
        # job used since is adopted then, and warmed at once.
        if self._cli_pool_adopt():
            self._cli_pool_checked = 0.0
        return super().should_run_maintenance_tasks or self._cli_pool_due()  # type: ignore[misc]

    def run_maintenance_tasks(self) -> None:
        if super().should_run_maintenance_tasks:  # type: ignore[misc]
            super().run_maintenance_tasks()  # type: ignore[misc]
        if self._cli_pool_due():
            self._cli_pool_checked = time.monotonic()
            if not self._cli_pool_backlog():
                self._cli_pool_fill()

    def teardown(self) -> None:
        super().teardown()  # type: ignore[misc]
        if self._cli_pool is not None and not getattr(self, "is_horse", False):
            # A stop must end within the supervisor's grace: an idle CLI has nothing to finish.
            self._cli_pool.close(grace=0.5)

    def _cli_pool_backlog(self) -> bool:
        """True while refilling should wait: jobs are queued, or other CLIs are still answering.

        The second for at most REFILL_DEFER_MAX: a burst's last jobs finish sooner without node
        start-ups beside them, and other hosts' CLIs (they count too) must not hold this pool empty.
        """
        try:
            pipe = self.connection.pipeline(transaction=False)  # type: ignore[attr-defined]
            for queue in self.queues:  # type: ignore[attr-defined]
                pipe.llen(queue.key)
            pipe.zcount(metrics.CLI_RUNNING_KEY, time.time(), "+inf")
            *lengths, running = pipe.execute()
        except Exception:
            logger.warning("could not read the queue lengths; refilling the warm CLI pool", exc_info=True)
            return False
        if any(lengths):
            return True
        now = time.monotonic()
        if running:
            if self._cli_pool_deferred_since is None:
                self._cli_pool_deferred_since = now
            if now - self._cli_pool_deferred_since < REFILL_DEFER_MAX:
                return True
        self._cli_pool_deferred_since = None
        return False

    def _cli_pool_due(self) -> bool:
        pool = self._cli_pool
        if pool is None:
            return False
        # A deferred refill is looked at again on every wake-up (each second while it waits).
        return (
            self._cli_pool_deferred_since is not None
            or time.monotonic() - self._cli_pool_checked >= pool.max_age / 4
        )

    def _cli_pool_fill(self) -> None:
        self._cli_pool_checked = time.monotonic()
        assert self._cli_pool is not None
        try:
            self._cli_pool.fill()
        except Exception:
            logger.exception("could not refill the warm Claude CLI pool; jobs start their CLI cold meanwhile")
