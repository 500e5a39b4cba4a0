"""Running a job: claim it, run the CLI, record and cache the outcome, and say that it is known.

What follows an outcome: ``request_recorded`` (a joined or cache-answered request was written) and
``job_finished`` (a job reached its final state) update quotas, metrics and logs here, then send the
``queries.signals`` of the same names, which the apps above subscribe to (webhooks).
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import django_rq
from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from claude_cli import runner
from claude_cli.invocation import ClaudeOutcome, RunnerConfig
from claude_cli.process import kill_orphaned_group, process_alive
from core import logs, metrics
from core.db import connections_drop_broken
from core.redis import redis_client
from queries import pool, quotas, signals
from queries.models import PRIORITY_QUEUES, Job, QueryRequest
from queries.services import breaker, sessions
from queries.services.cache import cache_get, cache_put
from queries.services.dedup import dedup_release
from queries.services.events import events_append, events_final_append
from routing.services import McpUnavailable, Route, route_for_job

logger = logging.getLogger(__name__)

# Set by job_cancel for a running job; the worker running it polls for the key and stops the CLI.
CANCEL_KEY = "cancel:{}"


_queues: dict[str, Any] = {}

# When each step of the job being run here happened (wall-clock seconds): claimed, cli_started (the
# prompt handed to the CLI), first_event (its first text or tool event), cli_exited, recorded (the
# final state written), final_event (the event readers wake on). Logged with the job's final line.
_timings: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "job_timings", default=None
)


def _mark(step: str) -> None:
    timings = _timings.get()
    if timings is not None and step not in timings:
        timings[step] = round(time.time(), 4)


def job_enqueue(*, job: Job, at_front: bool = False) -> None:
    """Put a job on its priority's rq queue. Only the job id travels: rq's admin shows job arguments.

    django-rq defers the enqueue to the end of the surrounding database transaction (COMMIT_MODE
    on_db_commit), so a worker never picks up a job whose row it cannot see yet.
    """
    name = PRIORITY_QUEUES[job.priority]
    queue = _queues.get(name)
    if queue is None:
        queue = _queues[name] = django_rq.get_queue(name)
    queue.enqueue(
        "queries.tasks.run_job",
        str(job.id),
        job_id=job.rq_job_id or str(job.id),
        job_timeout=settings.RQ_JOB_TIMEOUT,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        description=f"run job {job.id}",
        # The worker picks a CLI started ahead of time by these, without a database query.
        meta=pool.job_meta(
            model=job.model, servers=job.mcp_servers, resume=job.session_parent_id is not None
        ),
        at_front=at_front,
    )


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_run(*, job_id: uuid.UUID | str, creator: quotas.JobCreator | None = None) -> Job | None:
    """Claim a queued job, run the CLI for it, and record the outcome.

    ``creator`` is the job's creating submission if the caller looked it up already (else it is
    looked up when needed). Returns the finished job, or None if another worker had claimed it (or
    it was cancelled).
    """
    entered = round(time.time(), 4)
    if breaker.breaker_open():
        # A worker that was already waiting for work when the breaker opened: leave the job queued.
        waiting = Job.objects.filter(id=job_id, state=Job.State.QUEUED).first()
        if waiting is not None:
            _job_requeue(job=waiting, reason="the upstream circuit breaker is open")
            return None
    claimed = Job.objects.filter(id=job_id, state=Job.State.QUEUED).update(
        state=Job.State.RUNNING, started_at=timezone.now(), worker_name=_worker_name(), progress=0
    )
    if claimed != 1:
        logger.info("job %s was not queued any more; skipping it", job_id)
        return None
    timings = _timings.set({"job_run": entered, "claimed": round(time.time(), 4)})
    job = Job.objects.get(id=job_id)
    if creator is not None:
        quotas.job_creator_remember(job=job, creator=creator)
    held = False
    try:
        if job.use_cache and settings.CACHE_ENABLED:
            entry = cache_get(query_hash=job.hash)
            if entry is not None:
                return _job_complete_from_cache(job=job, entry=entry)
        refusal = quotas.job_budget_refusal(job=job)
        if refusal is not None:
            return job_fail(job=job, error_type=Job.ErrorType.BUDGET_EXCEEDED, message=refusal)
        finished = _job_execute(job=job)
        held = finished.state == Job.State.QUEUED
        return finished
    except Exception as exc:
        logger.exception("job %s failed inside the gateway", job.id)
        job_fail(job=job, error_type=Job.ErrorType.INTERNAL_ERROR, message=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        # A job queued again keeps its mark: identical submissions still join it. A final state
        # released it already (_job_final_state).
        if not held and job.state not in Job.FINISHED_STATES:
            dedup_release(query_hash=job.hash, job_id=job.id)
        _timings.reset(timings)


def _job_execute(*, job: Job) -> Job:
    try:
        route = route_for_job(intent=job.intent, server_names=job.mcp_servers)
    except McpUnavailable as exc:
        return job_fail(job=job, error_type=Job.ErrorType.MCP_UNAVAILABLE, message=str(exc))
    invocation = pool.invocation_for(
        prompt=job.query,
        model=job.model,
        route=route,
        content=job.prompt_content or None,
        system_prompt=job.system_prompt or None,
    )
    logs.secrets_register_mcp(invocation.mcp_config)

    def on_start(pid: int) -> None:
        _mark("cli_started")
        Job.objects.filter(id=job.id).update(progress=10, cli_pid=pid)
        events_append(job.id, {"type": "progress", "state": Job.State.RUNNING, "progress": 10})
        metrics.cli_started(job_id=job.id, expected_end=time.time() + settings.RQ_JOB_TIMEOUT)

    def on_event(event: dict[str, Any]) -> None:
        # Text deltas and tool activity as the CLI prints them; the final event follows the row.
        _mark("first_event")
        events_append(job.id, event)

    config = pool.runner_config()
    plan = sessions.session_plan(job=job, invocation=invocation, config=config)
    answer = _Answer(job=job, route=route, config=config, plan=plan)
    hooks = _RunHooks(job=job, on_start=on_start, on_event=on_event, on_answer=answer)
    try:
        outcome = _run_planned(plan=plan, config=config, hooks=hooks)
        if plan.resumes and sessions.resume_refused(outcome):
            reason = f"the CLI did not resume session {plan.invocation.resume}: {outcome.error_message}"
            plan = answer.plan = sessions.session_fallback(job=job, invocation=invocation, reason=reason)
            outcome = _run_planned(plan=plan, config=config, hooks=hooks)
        _mark("cli_exited")
        if answer.taken is not None:
            _answered_run_exited(job=job, plan=plan, config=config, answered=answer.taken, outcome=outcome)
            return job
    except Exception:
        if answer.taken is None:
            raise
        # The answer is recorded and given: what fails after it (rq's job timeout while the CLI
        # exits, say; the runner has killed the CLI) must not turn the job into a failure.
        logger.exception("job %s: its run failed after its answer was recorded", job.id)
        return job
    # The run took seconds: if PostgreSQL dropped the connection meanwhile, record on a fresh one.
    connections_drop_broken()
    _record_cli_output(job=job, outcome=outcome)
    metrics.cli_run_observed(job=job, outcome=outcome)
    if outcome.ok:
        breaker.breaker_success()
    elif outcome.error_type == "upstream_unavailable":
        return _job_hold(job=job, reason=outcome.error_message)
    if not outcome.ok:
        sessions.session_record(job=job, invocation=plan.invocation, config=config, outcome=outcome)
        return job_fail(
            job=job,
            error_type=outcome.error_type or Job.ErrorType.CLI_ERROR,
            message=outcome.error_message,
            extra_fields=_OUTPUT_FIELDS,
        )
    _job_complete(job=job, route=route, plan=plan, config=config, outcome=outcome)
    return _job_announce(job=job)


def _job_complete(
    *, job: Job, route: Route, plan: sessions.SessionPlan, config: RunnerConfig, outcome: ClaudeOutcome
) -> None:
    """Record a successful run's answer: its session, the cache entry, and the job's final state."""
    # The answer's writes commit once: each commit waits for the WAL to reach the disk (about 1 ms
    # on an idle machine, 10 ms on a busy one), and the client is waiting for the last of them. The
    # job's row is written once, with its final state: no one sees the row between these writes.
    with transaction.atomic():
        sessions.session_record(job=job, invocation=plan.invocation, config=config, outcome=outcome)
        _mark("session_recorded")
        # Cache before the job is marked completed: a submission that finds the in-flight mark naming
        # a finished job goes to the cache next, and must find the answer there. A noCache
        # submission's answer is cached too: noCache skips the lookup, not the store.
        if settings.CACHE_ENABLED and route.cacheable:
            cache_put(job=job, ttl=route.cache_ttl)
        _mark("cached")
        _job_final_state(job=job, state=Job.State.COMPLETED, extra_fields=_OUTPUT_FIELDS)


class _Answer:
    """The answer taken from the CLI's result line, before the CLI exits (runner.run_claude's
    ``on_answer``): the client waits neither for the CLI to stop its MCP servers nor for its exit.

    It is taken once the session file holds the whole turn (sessions.session_settled), so the
    session kept is the one a continuation needs; else, or when recording fails, the answer is
    recorded after the exit as before. ``taken`` is the outcome it recorded.
    """

    def __init__(self, *, job: Job, route: Route, config: RunnerConfig, plan: sessions.SessionPlan) -> None:
        self.job, self.route, self.config, self.plan = job, route, config, plan
        self.taken: ClaudeOutcome | None = None

    def __call__(self, outcome: ClaudeOutcome) -> bool:
        job, plan, config = self.job, self.plan, self.config
        if not sessions.session_settled(
            invocation=plan.invocation,
            config=config,
            outcome=outcome,
            timeout=sessions.SESSION_SETTLE_TIMEOUT,
        ):
            logger.info(
                "job %s: the CLI's session file is not complete yet; the answer waits for its exit", job.id
            )
            return False
        _mark("cli_answered")
        try:
            connections_drop_broken()
            _record_cli_output(job=job, outcome=outcome)
            _job_complete(job=job, route=self.route, plan=plan, config=config, outcome=outcome)
        except (DatabaseError, RedisError):
            # Nothing is final (the transaction did not commit): recorded after the exit instead.
            logger.warning("job %s: could not record the answer before the CLI exited", job.id, exc_info=True)
            job.state = Job.State.RUNNING
            return False
        self.taken = outcome
        breaker.breaker_success()
        _job_announce(job=job)
        return True


def _answered_run_exited(
    *,
    job: Job,
    plan: sessions.SessionPlan,
    config: RunnerConfig,
    answered: ClaudeOutcome,
    outcome: ClaudeOutcome,
) -> None:
    """The CLI whose answer was taken has exited (or was stopped): what is left of its run. The row
    holds exit code 0 since the answer; another exit status is written now, and logged."""
    metrics.cli_run_observed(job=job, outcome=answered)  # its duration: up to the answer
    sessions.session_leftovers_remove(invocation=plan.invocation, config=config, outcome=answered)
    if outcome.ok:
        return
    logger.warning("job %s: the Claude CLI ended badly after its answer: %s", job.id, outcome.error_message)
    if outcome.exit_code is not None and outcome.exit_code != job.exit_code:
        job.exit_code, job.stderr_tail = outcome.exit_code, outcome.stderr[-8192:]
        with suppress(DatabaseError):
            Job.objects.filter(id=job.id).update(exit_code=job.exit_code, stderr_tail=job.stderr_tail)


@dataclass(frozen=True)
class _RunHooks:
    """What a job's CLI run reports to (runner.run_claude's callbacks)."""

    job: Job
    on_start: Callable[[int], None]
    on_event: Callable[[dict[str, Any]], None]
    on_answer: Callable[[ClaudeOutcome], bool]


def _run_planned(*, plan: sessions.SessionPlan, config: RunnerConfig, hooks: _RunHooks) -> ClaudeOutcome:
    """Run the CLI as planned: a resumed turn cold, with its parent's session file in place."""
    job = hooks.job
    try:
        with sessions.session_files(plan=plan, config=config):
            return runner.run_claude(
                plan.invocation,
                config,
                on_start=hooks.on_start,
                should_cancel=lambda: job_cancel_requested(job_id=job.id),
                # A CLI started ahead of time cannot have been started with --resume.
                warm=None if plan.resumes else pool.pool_claim(invocation=plan.invocation, config=config),
                on_event=hooks.on_event,
                on_upstream=breaker.breaker_failure,
                on_answer=hooks.on_answer,
            )
    except OSError as exc:
        reason = f"the session file could not be restored: {exc}"
        fallback = sessions.session_fallback(job=job, invocation=plan.fresh or plan.invocation, reason=reason)
        # No on_answer: the answer's session check follows the plan it was made for, not this one,
        # so this run's answer is recorded after the CLI exits.
        return runner.run_claude(
            fallback.invocation,
            config,
            on_start=hooks.on_start,
            should_cancel=lambda: job_cancel_requested(job_id=job.id),
            on_event=hooks.on_event,
            on_upstream=breaker.breaker_failure,
        )


_USAGE_FIELDS = [
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "duration_ms",
    "num_turns",
    "session_id",
    "stop_reason",
]
# What _record_cli_output sets; written with the job's final state.
_OUTPUT_FIELDS = ["model", "response", "cli_output", "exit_code", "stderr_tail", *_USAGE_FIELDS]


def _record_cli_output(*, job: Job, outcome: ClaudeOutcome) -> None:
    data = outcome.data or {}
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    result = data.get("result")
    job.cli_output = outcome.data
    job.exit_code = outcome.exit_code
    job.stderr_tail = outcome.stderr[-8192:] if not outcome.ok else ""
    job.response = result if outcome.ok and isinstance(result, str) else ""
    job.cost_usd = _decimal(data.get("total_cost_usd"))
    job.input_tokens = _count(usage.get("input_tokens"))
    job.output_tokens = _count(usage.get("output_tokens"))
    job.cache_read_input_tokens = _count(usage.get("cache_read_input_tokens"))
    job.cache_creation_input_tokens = _count(usage.get("cache_creation_input_tokens"))
    job.duration_ms = _count(data.get("duration_ms"))
    job.num_turns = _count(data.get("num_turns"))
    job.session_id = str(data.get("session_id") or "")[:100]
    stop_reason = data.get("stop_reason")
    job.stop_reason = stop_reason[:32] if isinstance(stop_reason, str) else ""
    if not job.model and isinstance(data.get("modelUsage"), dict) and data["modelUsage"]:
        job.model = str(next(iter(data["modelUsage"])))[:100]


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _decimal(value: Any) -> Decimal | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value)).quantize(Decimal("0.000001"))
    except InvalidOperation:
        return None


def _job_hold(*, job: Job, reason: str) -> Job:
    """The breaker opened while the job's CLI retried: queue the job again instead of failing it.

    It goes back to the front of its queue under a new rq job id (the current rq job is ending);
    workers take it once the breaker lets them (queries.worker).
    """
    Job.objects.filter(id=job.id, state=Job.State.RUNNING).update(
        state=Job.State.QUEUED, started_at=None, worker_name="", cli_pid=None, progress=0, model=job.model
    )
    job.refresh_from_db()
    metrics.cli_stopped(job_id=job.id)
    events_append(job.id, {"type": "progress", "state": Job.State.QUEUED, "progress": 0})
    return _job_requeue(job=job, reason=reason)


def _job_requeue(*, job: Job, reason: str) -> Job:
    job.rq_job_id = str(uuid.uuid4())
    Job.objects.filter(id=job.id).update(rq_job_id=job.rq_job_id)
    try:
        job_enqueue(job=job, at_front=True)
    except RedisError as exc:
        return job_fail(job=job, error_type=Job.ErrorType.QUEUE_UNAVAILABLE, message=f"{reason}; {exc}")
    logger.info("job %s queued again: %s", job.id, reason)
    return job


def _job_complete_from_cache(*, job: Job, entry: dict[str, Any]) -> Job:
    """Another job answered the same query while this one waited: reuse that answer."""
    result = entry["result"] or {}
    usage = result.get("usage") or {}
    job.response = result.get("response") or ""
    job.served_from_cache = True
    job.session_id = result.get("sessionId") or ""
    job.num_turns = result.get("numTurns")
    job.duration_ms = result.get("durationMs")
    job.input_tokens = usage.get("inputTokens")
    job.output_tokens = usage.get("outputTokens")
    job.cache_read_input_tokens = usage.get("cacheReadInputTokens")
    job.cache_creation_input_tokens = usage.get("cacheCreationInputTokens")
    job.stop_reason = str(result.get("stopReason") or "")[:32]
    job.model = job.model or (result.get("model") or "")
    job.cost_usd = Decimal(0)  # nothing was spent on this execution
    return _job_finish(
        job=job,
        state=Job.State.COMPLETED,
        extra_fields=["response", "served_from_cache", "model", *_USAGE_FIELDS],
    )


def _job_finish(*, job: Job, state: str, extra_fields: Iterable[str] = ()) -> Job:
    _job_final_state(job=job, state=state, extra_fields=extra_fields)
    return _job_announce(job=job)


def _job_final_state(*, job: Job, state: str, extra_fields: Iterable[str] = ()) -> None:
    # Cleared before the final state is written, so whoever sees the job finished sees no mark either.
    # A submission in between finds no mark and makes a new job: the cache holds a success's answer
    # already, and a failure's answer is never reused.
    dedup_release(query_hash=job.hash, job_id=job.id)
    job.state = state
    job.progress = 100
    job.finished_at = timezone.now()
    job.save(update_fields=["state", "progress", "finished_at", "error_type", "error_message", *extra_fields])


def _job_announce(*, job: Job) -> Job:
    """The final state is committed: the final event (readers then read the row), and the rest."""
    _mark("recorded")
    job_finished(job=job)
    logger.info("job %s %s", job.id, job.state, extra={"timings": _timings.get() or {}})
    return job


def request_recorded(*, request: QueryRequest) -> None:
    """A joined or cache-answered request was recorded; its outcome may already be known."""
    metrics.request_counted(request=request)
    signals.send(signals.request_recorded, request=request)


def job_finished(*, job: Job) -> None:
    """A job reached a final state: every request that points to it now has its outcome."""
    # The stream's last entry: every reader of the job's events ends on it.
    events_final_append(job)
    _mark("final_event")
    quotas.quota_jobs_release(job=job)
    metrics.job_finished_counted(job=job)
    logs.job_failure_log(job=job)
    signals.send(signals.job_finished, job=job)


def job_fail(*, job: Job, error_type: str, message: str, extra_fields: Iterable[str] = ()) -> Job:
    """Record a job's failure (state ``cancelled`` for error type ``cancelled``). Errors are never cached."""
    job.error_type = error_type
    job.error_message = message[:10_000]
    state = Job.State.CANCELLED if error_type == Job.ErrorType.CANCELLED else Job.State.FAILED
    return _job_finish(job=job, state=state, extra_fields=extra_fields)


def job_orphans_fail(*, idle_pid: int | None = None) -> int:
    """Fail, as ``worker_lost``, the running jobs of this host whose worker process is gone; returns
    how many. ``idle_pid`` is a process known to run no job now (the caller, between jobs): a job
    naming it was left by a dead process whose pid it reuses.

    A worker that runs jobs in its own process takes its job down with it when it dies; the worker
    that replaces it and every worker's maintenance call this.
    """
    host = socket.gethostname()
    running = Job.objects.filter(state=Job.State.RUNNING, worker_name__startswith=f"{host}:")
    failed = 0
    for job_id, worker_name in running.values_list("id", "worker_name"):
        try:
            pid = int(worker_name.rpartition(":")[2])
        except ValueError:
            continue
        if pid != idle_pid and process_alive(pid):
            continue
        if job_worker_lost(job_id=job_id, reason="The worker process running it died."):
            failed += 1
    return failed


def job_worker_lost(*, job_id: uuid.UUID | str, reason: str) -> bool:
    """Fail a running job whose worker died, killing its CLI if it runs on this host.

    Returns False if the job was not running (it finished, or someone else settled it).
    """
    job = Job.objects.filter(id=job_id, state=Job.State.RUNNING).first()
    if job is None:
        return False
    host = job.worker_name.rpartition(":")[0]
    if job.cli_pid and host == socket.gethostname():
        kill_orphaned_group(job.cli_pid)
    # Before the final state, as in _job_final_state: whoever sees the job failed sees no mark.
    dedup_release(query_hash=job.hash, job_id=job.id)
    settled = Job.objects.filter(id=job.id, state=Job.State.RUNNING).update(
        state=Job.State.FAILED,
        error_type=Job.ErrorType.WORKER_LOST,
        error_message=reason,
        progress=100,
        finished_at=timezone.now(),
    )
    if settled:
        logger.warning("job %s: %s", job.id, reason)
        job.refresh_from_db()
        job_finished(job=job)
    return bool(settled)


def job_cancel_requested(*, job_id: uuid.UUID | str) -> bool:
    """Whether an operator asked to cancel this job. Called every 0.5 s while its CLI runs."""
    try:
        return bool(redis_client().exists(CANCEL_KEY.format(job_id)))
    except RedisError:
        return False
