"""Conversations: a turn continues the CLI session of an earlier answer instead of replaying text.

- After every successful run the worker keeps the CLI's session file in a :class:`Session` row
  (PostgreSQL, at most SESSION_MAX_BYTES of it) and removes it from the host: no host owns a
  session, so losing a host or its HOME loses nothing (``session_record``).
- A turn that continues a session (native ``sessionId``, or a /v1 history whose lineage matches a
  stored one, queries.lineage) is a job with ``session_parent``. The worker writes the parent's file
  back under its own HOME and runs ``--resume <parent> --fork-session --session-id <new>`` with this
  turn's user message alone (``session_plan``). Each turn is a new session, so two continuations
  of one turn never share a file. Such a run starts cold: a warm CLI cannot be started for a session.
- When the file was not kept (over SESSION_MAX_BYTES) or the CLI refuses to resume it, the turn runs
  fresh with the conversation as a flat transcript, recorded as ``session_mode = fallback`` with the
  reason in ``session_note`` (``session_fallback``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from claude_cli import sessions as cli_sessions
from claude_cli.invocation import ClaudeInvocation, ClaudeOutcome, RunnerConfig
from claude_cli.process import child_env, process_alive
from core.errors import InvalidRequest, NotFound
from queries import lineage, quotas
from queries.models import ApiKey, Job, QueryRequest, Session, SessionMode

logger = logging.getLogger(__name__)

# How many earlier turns a flat transcript of a native conversation reaches back.
TRANSCRIPT_MAX_TURNS = 200
# How long an answer taken before the CLI exits waits for the CLI to finish the session file (a few
# milliseconds after its result line), before the answer waits for the CLI's exit instead.
SESSION_SETTLE_TIMEOUT = 0.5
_SETTLE_POLL = 0.002


def _visible(api_key: ApiKey | None) -> Q:
    """Sessions the caller may continue: its own, or one whose answer it received (a cache hit or a
    joined job of another key's, with CACHE_SCOPE=global)."""
    received = QueryRequest.objects.filter(job_id=OuterRef("job_id"))
    if api_key is None:
        return Q(api_key__isnull=True) | Q(Exists(received.filter(api_key__isnull=True)))
    return Q(api_key=api_key) | Q(Exists(received.filter(api_key=api_key)))


def session_for_caller(*, session_id: str, api_key: ApiKey | None) -> Session:
    """The session a native ``sessionId`` names, if the caller may continue it; else NotFound (an
    unknown, expired or another key's session look the same) or InvalidRequest (sessions are off)."""
    if not settings.SESSIONS_ENABLED:
        raise InvalidRequest("Conversations are disabled on this gateway (SESSIONS_ENABLED=false).")
    try:
        canonical = cli_sessions.session_id_check(session_id)
    except cli_sessions.SessionIdInvalid:
        raise NotFound("No such session: session ids are UUIDs.") from None
    found = (
        Session.objects.filter(cli_session_id=canonical, expires_at__gt=timezone.now())
        .filter(_visible(api_key))
        .first()
    )
    if found is None:
        raise NotFound(f"No session {canonical}.")
    return found


def session_match(*, api_key: ApiKey | None, lineage_hash: str) -> Session | None:
    """The caller's latest live session whose conversation has this lineage, or None."""
    if not settings.SESSIONS_ENABLED:
        return None
    return (
        Session.objects.filter(lineage_hash=lineage_hash, expires_at__gt=timezone.now())
        .filter(_visible(api_key))
        .order_by("-last_used_at")
        .first()
    )


@dataclass(frozen=True)
class Continuation:
    """Where a submitted turn stands in its conversation (stored on its job)."""

    prefix: str
    parent: Session | None = None
    turn_content: list[dict[str, Any]] | None = None
    turn_number: int = 1

    @property
    def hash_scope(self) -> str | None:
        """What the cache key adds for a native continuation: the lineage before this turn."""
        return self.prefix if self.parent is not None and self.turn_content is None else None

    def job_fields(self) -> dict[str, Any]:
        return {
            "session_parent": self.parent,
            "lineage_prefix": self.prefix,
            "turn_content": self.turn_content,
            "turn_number": self.turn_number,
            "session_mode": SessionMode.RESUMED if self.parent is not None else SessionMode.FRESH,
        }


def continuation_native(*, session_id: str | None, api_key: ApiKey | None) -> Continuation:
    """A native query: a new conversation, or the next turn of the session ``session_id`` names."""
    if session_id is None:
        return Continuation(prefix=lineage.lineage_root())
    parent = session_for_caller(session_id=session_id, api_key=api_key)
    return Continuation(prefix=parent.lineage_hash, parent=parent, turn_number=parent.turns + 1)


def continuation_of_history(*, history: lineage.History, api_key: ApiKey | None) -> Continuation:
    """A /v1 request: its earlier turns continue a session the gateway answered, or none matches
    (then the job's prompt, a flat transcript, is run fresh)."""
    prefix = history.prefix
    parent = session_match(api_key=api_key, lineage_hash=prefix) if history.pairs else None
    return Continuation(
        prefix=prefix, parent=parent, turn_content=list(history.last), turn_number=len(history.pairs) + 1
    )


# The worker side


@dataclass(frozen=True)
class SessionPlan:
    """How a job's CLI runs: the invocation, and the session it resumes (None: a fresh run)."""

    invocation: ClaudeInvocation
    parent: Session | None = None
    # The job's own invocation, before it was made a resumption: what a fallback starts from.
    fresh: ClaudeInvocation | None = None

    @property
    def resumes(self) -> bool:
        return self.parent is not None


def _workdir(invocation: ClaudeInvocation, config: RunnerConfig) -> str:
    return str(invocation.workdir or config.workdir or Path.cwd())


def _turn_prompt(job: Job) -> str:
    """This turn's user message alone, as text (what a resumed session is sent)."""
    if job.turn_content is None:
        return job.query
    return "\n\n".join(
        str(b.get("text", "")) for b in job.turn_content if isinstance(b, dict) and b.get("type") == "text"
    )


def session_plan(*, job: Job, invocation: ClaudeInvocation, config: RunnerConfig) -> SessionPlan:
    """Resume the job's parent session if it has one that can be resumed; else run fresh."""
    parent = job.session_parent
    if parent is None or not config.sessions:
        return SessionPlan(invocation=invocation)
    if parent.content is None:
        reason = f"the session file ({parent.size_bytes} bytes) was over SESSION_MAX_BYTES and not kept"
        return session_fallback(job=job, invocation=invocation, reason=reason)
    resumed = replace(
        invocation,
        # A turn that names no model continues on the session's own (the CLI's default would drop
        # a context variant such as "[1m]" on resume, and with it the prompt cache of the history).
        model=invocation.model or (parent.job.model if parent.job is not None and parent.job.model else None),
        prompt=_turn_prompt(job),
        # /v1: the new user message's blocks alone (the job's content leads with the transcript).
        content=list(job.turn_content) if job.turn_content else None,
        resume=parent.cli_session_id,
        session_id=str(uuid.uuid4()),
    )
    return SessionPlan(invocation=resumed, parent=parent, fresh=invocation)


@contextmanager
def session_files(*, plan: SessionPlan, config: RunnerConfig) -> Iterator[None]:
    """The parent's file restored for the run; raises OSError when it cannot be written."""
    if plan.parent is None or plan.parent.content is None:
        yield
        return
    with cli_sessions.session_restored(
        session_id=plan.parent.cli_session_id,
        workdir=_workdir(plan.invocation, config),
        env=child_env(config),
        content=bytes(plan.parent.content),
    ):
        yield


def resume_refused(outcome: ClaudeOutcome) -> bool:
    """Whether a resumed run failed before it answered anything: the CLI printed no result (it said
    "No conversation found with session ID" and exited 1, or could not read the file)."""
    return not outcome.ok and outcome.data is None and outcome.error_type == "cli_error"


def session_fallback(*, job: Job, invocation: ClaudeInvocation, reason: str) -> SessionPlan:
    """A fresh run with the conversation as a flat transcript, recorded on the job. ``invocation`` is
    the job's own (SessionPlan.fresh): a /v1 job's content already holds the transcript."""
    logger.warning("job %s: cannot resume its session (%s); running it fresh", job.id, reason)
    job.session_mode = SessionMode.FALLBACK
    job.session_note = reason[:500]
    Job.objects.filter(id=job.id).update(session_mode=job.session_mode, session_note=job.session_note)
    prompt = job.query if job.turn_content is not None else transcript_prompt(job=job)
    return SessionPlan(invocation=replace(invocation, prompt=prompt, resume=None, session_id=None))


def session_lineage(*, session: Session, limit: int = TRANSCRIPT_MAX_TURNS) -> list[Session]:
    """The sessions of a conversation's turns up to ``session``, oldest first (at most ``limit``)."""
    chain: list[Session] = []
    current: Session | None = session
    while current is not None and len(chain) < limit:
        chain.append(current)
        current = current.parent
    return chain[::-1]


def transcript_prompt(*, job: Job) -> str:
    """A native turn's conversation as one prompt: the earlier turns as a transcript, then the query."""
    if job.session_parent is None:
        return job.query
    turns = [
        (_turn_prompt(turn.job), turn.job.response)
        for turn in session_lineage(session=job.session_parent)
        if turn.job is not None
    ]
    if not turns:
        return job.query
    lines = ["The conversation so far:"]
    for user, answer in turns:
        lines += [f"User: {user}", f"Assistant: {answer}"]
    return "\n\n".join([*lines, "Now answer this, the next user message:", job.query])


def _run_session_id(invocation: ClaudeInvocation, outcome: ClaudeOutcome) -> str:
    return str((outcome.data or {}).get("session_id") or invocation.session_id or "")


def session_settled(
    *, invocation: ClaudeInvocation, config: RunnerConfig, outcome: ClaudeOutcome, timeout: float
) -> bool:
    """Whether the run's session file holds the whole turn, waiting up to ``timeout`` for the CLI to
    finish it: an answer recorded before the CLI exits keeps the session from the file as it is
    then (session_record), and may be continued at once. True at once when sessions are off; False
    once the CLI has exited (the answer is then recorded as any other)."""
    if not config.sessions:
        return True
    session_id = _run_session_id(invocation, outcome)
    workdir, env = _workdir(invocation, config), child_env(config)
    deadline = time.monotonic() + timeout
    while not cli_sessions.session_settled(session_id=session_id, workdir=workdir, env=env):
        if time.monotonic() >= deadline or outcome.pid is None or not process_alive(outcome.pid):
            return False
        time.sleep(_SETTLE_POLL)
    return True


def session_leftovers_remove(
    *, invocation: ClaudeInvocation, config: RunnerConfig, outcome: ClaudeOutcome
) -> None:
    """Remove the session file again once the CLI has exited: a CLI whose answer was recorded
    before it exited may have written to it after session_record took it."""
    if config.sessions:
        cli_sessions.session_remove(
            session_id=_run_session_id(invocation, outcome),
            workdir=_workdir(invocation, config),
            env=child_env(config),
        )


def session_record(
    *, job: Job, invocation: ClaudeInvocation, config: RunnerConfig, outcome: ClaudeOutcome
) -> Session | None:
    """Keep the session of a successful run in the database; remove the file from the host whatever
    the outcome (a failed run's session is never continued)."""
    if not config.sessions:
        return None
    session_id = _run_session_id(invocation, outcome)
    workdir, env = _workdir(invocation, config), child_env(config)
    try:
        content, size = (
            cli_sessions.session_read(
                session_id=session_id, workdir=workdir, env=env, max_bytes=settings.SESSION_MAX_BYTES
            )
            if outcome.ok
            else (None, 0)
        )
        cli_sessions.session_remove(session_id=session_id, workdir=workdir, env=env)
    except cli_sessions.SessionIdInvalid:
        if outcome.ok:
            logger.warning("job %s: the CLI reported no usable session id (%r)", job.id, session_id)
        return None
    if not outcome.ok:
        return None
    if content is None and size == 0:
        logger.warning("job %s: the CLI saved no session file for %s", job.id, session_id)
        return None
    try:
        # A savepoint: the caller may hold a transaction that must outlive a failure here.
        with transaction.atomic():
            return _session_store(job=job, session_id=session_id, content=content, size=size)
    except DatabaseError:
        # The answer matters more than the chance to continue from it.
        logger.exception("job %s: could not keep its session %s", job.id, session_id)
        return None


def _session_key_id(*, job: Job) -> int | None:
    """The key of the job's first request: its creator (looked up once for the whole run), else the
    earliest request made for it."""
    creator = quotas.job_creator(job=job)
    if creator is not None:
        return creator.api_key_id
    first = job.requests.order_by("created_at").values_list("api_key_id", flat=True).first()
    return first


def _session_store(*, job: Job, session_id: str, content: bytes | None, size: int) -> Session:
    now = timezone.now()
    expires = now + timedelta(seconds=settings.SESSION_TTL)
    user: Any = job.turn_content if job.turn_content is not None else job.query
    prefix = job.lineage_prefix or lineage.lineage_root()
    fields: dict[str, Any] = {
        "api_key_id": _session_key_id(job=job),
        "job_id": job.id,
        # The turn before in the conversation, whether this run resumed it or fell back.
        "parent_id": job.session_parent_id,
        "lineage_hash": lineage.lineage_next(prefix, user=user, answer=job.response),
        "turns": job.turn_number,
        "input_tokens": job.input_tokens,
        "output_tokens": job.output_tokens,
        "cache_read_input_tokens": job.cache_read_input_tokens,
        "size_bytes": size,
        "content": content,
        "last_used_at": now,
        "expires_at": expires,
    }
    # One INSERT … ON CONFLICT (a job run again keeps its session's row): the answer waits for it.
    (session,) = Session.objects.bulk_create(
        [Session(cli_session_id=session_id, **fields)],
        update_conflicts=True,
        unique_fields=["cli_session_id"],
        update_fields=list(fields),
    )
    if job.session_parent_id is not None:
        Session.objects.filter(id=job.session_parent_id).update(last_used_at=now, expires_at=expires)
    return session


def sessions_purge(*, everything: bool = False) -> int:
    """Delete expired sessions (every session with ``everything``); returns how many."""
    rows = Session.objects.all() if everything else Session.objects.filter(expires_at__lte=timezone.now())
    _, per_model = rows.delete()
    return per_model.get(Session._meta.label, 0)
