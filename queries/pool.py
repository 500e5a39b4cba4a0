"""The warm CLI pool: Claude CLIs started ahead of time, so that a job does not wait for one to start.

A cold CLI spends about half a second starting (node, the CLI's own set-up, its MCP servers) before
it sends anything upstream. Started with ``--input-format stream-json`` it does all of that and then
waits on its stdin; a prompt written there is answered about 0.1 s later. How it fits the rq worker:

- The pool lives in the long-lived rq worker process (:class:`CliPoolWorkerMixin`). It is keyed by
  the job's model and MCP server names, which travel in the rq job's meta (:func:`job_meta`), so
  choosing a CLI costs no database query on the way to the job. A system prompt is not part of the
  key: a warm CLI gets it with the prompt (claude_cli.invocation.warm_input), so /v1/ calls with a
  system prompt are served warm like any other.
- Which keys to keep warm is shared by every worker: a worker that takes a job records its key in
  the Redis sorted set ``cli_pool:wanted`` (score: when), and every worker reads it at least every
  DEMAND_POLL seconds (an idle worker wakes that often) and keeps warm the CLAUDE_POOL_KEYS keys used
  last within CLAUDE_POOL_MAX_AGE. Without it, jobs of a new model (a /v1/ call names one) would find
  a warm CLI only on the worker that ran the last such job, and rq hands the next job to another.
- For each job the worker takes a CLI for that key and hands it over (:func:`hand_over`); the job
  (:func:`pool_claim`) writes the prompt, closes stdin (the CLI exits after one message once stdin is
  at end of file) and follows the CLI exactly as a cold one: timeout, cancellation, killing the
  process group. Before that it checks that the CLI was started with precisely the options the job
  needs (claude_cli.invocation.warm_key: every argument but the system prompt, the MCP servers'
  configuration as it is now, the working directory); if not, say an operator edited an MCP
  server since, it kills it and starts one cold.
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
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import connections
from redis import Redis
from redis.exceptions import RedisError

from claude_cli.invocation import ClaudeInvocation, RunnerConfig, warm_capable, warm_key
from claude_cli.pool import DEFAULT_DESCRIPTOR, CliPool, Descriptor, hand_over, handed
from claude_cli.warm import WarmProcess
from core import metrics
from routing.services import GENERAL_INTENT, McpUnavailable, Route, route_for_job

logger = logging.getLogger(__name__)

RUN_JOB = "queries.tasks.run_job"
META_KEY = "cli"


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
    CLI started ahead of time has exactly the options the job will need."""
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
# The keys the workers' jobs used (module doc): descriptor as JSON → when, in Unix seconds.
WANTED_KEY = "cli_pool:wanted"
# How often a worker reads it (at most; an idle worker wakes this often).
DEMAND_POLL = 1.0


def _descriptor_member(descriptor: Descriptor) -> str:
    model, servers = descriptor
    return json.dumps([model, list(servers)], separators=(",", ":"))


def _descriptor_of(member: bytes | str) -> Descriptor | None:
    try:
        model, servers = json.loads(member)
    except (ValueError, TypeError):
        return None
    if not (model is None or isinstance(model, str)) or not isinstance(servers, list):
        return None
    return (model or None, tuple(sorted(str(name) for name in servers)))


def pool_demand_record(*, redis: Redis, descriptor: Descriptor, max_keys: int, max_age: float) -> None:
    """Record that a job used ``descriptor`` now: every worker keeps it warm from its next poll.

    The set keeps the ``max_keys`` keys used last within ``max_age``, and expires with its last use."""
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    pipe.zadd(WANTED_KEY, {_descriptor_member(descriptor): now})
    pipe.zremrangebyscore(WANTED_KEY, "-inf", now - max_age)
    pipe.zremrangebyrank(WANTED_KEY, 0, -(max_keys + 1))
    pipe.expire(WANTED_KEY, max(1, math.ceil(max_age)))
    pipe.execute()


def pool_demand(*, redis: Redis, max_age: float) -> list[tuple[Descriptor, float]]:
    """The descriptors jobs used within ``max_age``, each with how many seconds ago, latest first."""
    now = time.time()
    entries: list[tuple[bytes, float]] = redis.zrevrangebyscore(  # type: ignore[assignment]
        WANTED_KEY, "+inf", now - max_age, withscores=True
    )
    demand = []
    for member, used in entries:
        descriptor = _descriptor_of(member)
        if descriptor is not None:
            demand.append((descriptor, max(0.0, now - used)))
    return demand


class CliPoolWorkerMixin:
    """For an rq forking worker: keep a :class:`CliPool` and hand each job a warm CLI (module doc)."""

    _cli_pool: CliPool | None = None
    _cli_pool_checked: float = 0.0
    _cli_pool_deferred_since: float | None = None
    _cli_pool_polled: float = 0.0
    _cli_pool_new_key: bool = False

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)  # type: ignore[misc]
        self._cli_pool = pool_from_settings()
        if self._cli_pool is not None:
            # Queries with no model and no MCP server are the common case: warm those from the start,
            # and the keys other workers' jobs used lately.
            self._cli_pool.want(DEFAULT_DESCRIPTOR)
            self._cli_pool_poll()
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
        if pool is not None and descriptor is not None:
            if warm is None:
                logger.info(
                    "no warm Claude CLI for model %s, MCP servers %s (warm here: %s)",
                    descriptor[0],
                    list(descriptor[1]),
                    [list(d) for d in pool.descriptors() if pool.idle(d)],
                )
            self._cli_pool_record(descriptor)
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

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        # Refill before waiting for work, unless work is waiting or CLIs are answering (module doc).
        pool = self._cli_pool
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
        # An idle worker wakes often enough to see the keys other workers' jobs used (DEMAND_POLL)
        # and to replace CLIs before they go stale.
        return max(1, min(timeout, int(self._cli_pool.max_age / 4), math.ceil(DEMAND_POLL)))

    @property
    def should_run_maintenance_tasks(self) -> bool:
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
        # A deferred refill is looked at again on every wake-up (each second while it waits), and so
        # is a key another worker's job used that this pool did not keep warm yet.
        if self._cli_pool_poll():
            self._cli_pool_new_key = True
        return (
            self._cli_pool_deferred_since is not None
            or self._cli_pool_new_key
            or time.monotonic() - self._cli_pool_checked >= pool.max_age / 4
        )

    def _cli_pool_record(self, descriptor: Descriptor) -> None:
        pool = self._cli_pool
        assert pool is not None
        try:
            pool_demand_record(
                redis=self.connection,  # type: ignore[attr-defined]
                descriptor=descriptor,
                max_keys=pool.max_keys,
                max_age=pool.max_age,
            )
        except RedisError:
            logger.warning("could not record the warm CLI key a job used", exc_info=True)

    def _cli_pool_poll(self) -> bool:
        """Keep warm the keys other workers' jobs used (at most every DEMAND_POLL seconds); True if
        one of them is new here."""
        pool = self._cli_pool
        now = time.monotonic()
        if pool is None or now - self._cli_pool_polled < DEMAND_POLL:
            return False
        self._cli_pool_polled = now
        try:
            demand = pool_demand(redis=self.connection, max_age=pool.max_age)  # type: ignore[attr-defined]
        except RedisError:
            logger.warning("could not read the warm CLI keys jobs used", exc_info=True)
            return False
        new = False
        for descriptor, ago in demand[: pool.max_keys]:
            new = pool.want(descriptor, ago=ago) or new
        return new

    def _cli_pool_fill(self) -> None:
        self._cli_pool_checked = time.monotonic()
        self._cli_pool_new_key = False
        assert self._cli_pool is not None
        try:
            self._cli_pool.fill()
        except Exception:
            logger.exception("could not refill the warm Claude CLI pool; jobs start their CLI cold meanwhile")
