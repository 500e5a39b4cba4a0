from __future__ import annotations

import hashlib
import json
import uuid
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Priority(models.TextChoices):
    HIGH = "high", "High"
    NORMAL = "normal", "Normal"
    LOW = "low", "Low"


# rq queue per priority; workers take them in this order.
PRIORITY_QUEUES: dict[str, str] = {Priority.HIGH: "high", Priority.NORMAL: "default", Priority.LOW: "low"}


class ApiKey(models.Model):
    """A caller's credential. Only the SHA-256 of the key is stored; the key is shown once."""

    PREFIX = "cgw_"

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The key's first characters, for recognising it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    # Limits: blank means unlimited (see queries/quotas.py for how each one is enforced).
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="After this moment the key is refused (401). Blank: never."
    )
    allowed_priorities = models.JSONField(
        default=list, blank=True, help_text="Priorities this key may ask for. Empty: all of them."
    )
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text="Model names this key may ask for; when set, every query must name one. Empty: any model.",
    )
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Submissions accepted in any rolling 60 seconds. Blank: unlimited.",
    )
    max_concurrent_jobs = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Jobs created by this key that may be queued or running at once. Blank: unlimited.",
    )
    monthly_budget_usd = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        help_text="New jobs are refused once this UTC month's CLI cost reaches it. Blank: unlimited.",
    )

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(rate_limit_per_minute__isnull=True) | Q(rate_limit_per_minute__gte=1),
                name="apikey_rate_limit_at_least_1",
            ),
            models.CheckConstraint(
                condition=Q(max_concurrent_jobs__isnull=True) | Q(max_concurrent_jobs__gte=1),
                name="apikey_max_concurrent_at_least_1",
            ),
            models.CheckConstraint(
                condition=Q(monthly_budget_usd__isnull=True) | Q(monthly_budget_usd__gte=0),
                name="apikey_budget_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def clean(self) -> None:
        if not isinstance(self.allowed_priorities, list) or not set(self.allowed_priorities) <= set(
            Priority.values
        ):
            raise ValidationError(
                {"allowed_priorities": f"Must be a list drawn from {', '.join(Priority.values)}."}
            )
        if not isinstance(self.allowed_models, list) or not all(
            isinstance(m, str) and m.strip() for m in self.allowed_models
        ):
            raise ValidationError({"allowed_models": "Must be a list of model names."})

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @staticmethod
    def hash_key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()


class SessionMode(models.TextChoices):
    FRESH = "fresh", "Fresh run"
    RESUMED = "resumed", "Resumed the session"
    FALLBACK = "fallback", "Fresh run with the flat transcript (resume failed)"


class Job(models.Model):
    """One execution of the Claude CLI, shared by every request that was joined onto it."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class ErrorType(models.TextChoices):
        CLI_TIMEOUT = "cli_timeout"
        CLI_ERROR = "cli_error"
        CLI_OUTPUT_INVALID = "cli_output_invalid"
        CLI_NOT_FOUND = "cli_not_found"
        WORKER_LOST = "worker_lost"
        CANCELLED = "cancelled"
        BUDGET_EXCEEDED = "budget_exceeded"
        QUEUE_UNAVAILABLE = "queue_unavailable"
        MCP_UNAVAILABLE = "mcp_unavailable"
        INTERNAL_ERROR = "internal_error"
        UPSTREAM_AUTH = "upstream_auth"

    FINISHED_STATES = (State.COMPLETED, State.FAILED, State.CANCELLED)
    ACTIVE_STATES = (State.QUEUED, State.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    hash = models.CharField(max_length=64, db_index=True)
    query = models.TextField(help_text="The first submitter's text, passed to the CLI verbatim.")
    prompt_content = models.JSONField(
        null=True,
        blank=True,
        help_text="The content blocks sent to the CLI (text and images) when the prompt is not plain text.",
    )
    system_prompt = models.TextField(
        blank=True, default="", help_text="Passed to the CLI as --system-prompt when not blank."
    )
    normalized_query = models.TextField()
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.NORMAL)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    model = models.CharField(max_length=100, blank=True, default="")
    intent = models.CharField(max_length=100, default="general")
    mcp_servers = models.JSONField(default=list, blank=True)
    use_cache = models.BooleanField(default=True, help_text="False when the submitter asked for noCache.")
    deduplicated = models.BooleanField(
        default=True,
        help_text="Identical submissions join this job while it is queued or running (DEDUP_ENABLED).",
    )
    served_from_cache = models.BooleanField(default=False)

    response = models.TextField(blank=True, default="")
    cli_output = models.JSONField(null=True, blank=True, help_text="The CLI's parsed JSON result.")
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    cache_read_input_tokens = models.PositiveIntegerField(null=True, blank=True)
    cache_creation_input_tokens = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True, help_text="The CLI's own duration.")
    num_turns = models.PositiveIntegerField(null=True, blank=True)
    session_id = models.CharField(max_length=100, blank=True, default="")
    stop_reason = models.CharField(
        max_length=32, blank=True, default="", help_text="The CLI's stop_reason (end_turn, max_tokens...)."
    )
    exit_code = models.IntegerField(null=True, blank=True)
    stderr_tail = models.TextField(blank=True, default="")
    error_type = models.CharField(max_length=32, choices=ErrorType.choices, blank=True, default="")
    error_message = models.TextField(blank=True, default="")

    rq_job_id = models.CharField(max_length=64, blank=True, default="")
    retry_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="retries",
        help_text="The failed or cancelled job an operator retried as this one.",
    )
    # Conversations (queries.services.sessions): the session this turn continues, the lineage of the
    # turns before it, and (/v1) this turn's user message alone, as the prompt holds the transcript.
    session_parent = models.ForeignKey(
        "Session",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="continuations",
        help_text="The CLI session this turn resumes (--resume … --fork-session).",
    )
    lineage_prefix = models.CharField(max_length=64, blank=True, default="")
    turn_number = models.PositiveIntegerField(default=1, help_text="This turn's place in its conversation.")
    turn_content = models.JSONField(
        null=True, blank=True, help_text="This turn's user message alone, sent when the session is resumed."
    )
    session_mode = models.CharField(max_length=16, choices=SessionMode.choices, blank=True, default="")
    session_note = models.CharField(max_length=500, blank=True, default="")
    worker_name = models.CharField(max_length=200, blank=True, default="")
    cli_pid = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Operators' "what is queued / running / failed lately" questions.
            models.Index(fields=["state", "created_at"], name="job_state_created_idx"),
            # The dashboard's outcomes per hour and cost per day, and "failed in the last hour".
            models.Index(fields=["finished_at"], name="job_finished_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(progress__lte=100), name="job_progress_at_most_100"),
            # The database's guard for dedup: at most one queued or running job per hash, whatever
            # Redis forgot (a flush loses the dedup:{hash} marks). query_submit joins the holder.
            models.UniqueConstraint(
                fields=["hash"],
                condition=Q(state__in=["queued", "running"], deduplicated=True),
                name="job_one_active_per_hash",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in self.FINISHED_STATES

    def result_payload(self) -> dict[str, Any] | None:
        """The contract's Result object, or None until the job has completed."""
        return self.build_result() if self.state == self.State.COMPLETED else None

    def build_result(self) -> dict[str, Any]:
        return {
            "response": self.response,
            "format": response_format(self.response),
            "model": self.model or _model_from_output(self.cli_output),
            "intent": self.intent,
            "mcpServers": list(self.mcp_servers or []),
            "sessionId": self.session_id or None,
            "durationMs": self.duration_ms,
            "numTurns": self.num_turns,
            "costUsd": float(self.cost_usd) if self.cost_usd is not None else None,
            "usage": {
                "inputTokens": self.input_tokens,
                "outputTokens": self.output_tokens,
                "cacheReadInputTokens": self.cache_read_input_tokens,
                "cacheCreationInputTokens": self.cache_creation_input_tokens,
            },
            "stopReason": self.stop_reason or None,
        }

    def error_payload(self) -> dict[str, str] | None:
        if not self.error_type:
            return None
        return {"type": self.error_type, "message": self.error_message}


class Session(models.Model):
    """One answered turn's CLI session: the file the CLI saved, kept so any host can resume it.

    Each turn is a new CLI session (a fork of the one before), so a conversation is a chain of rows
    through ``parent``, and a conversation continued twice from one turn is a tree.
    """

    cli_session_id = models.CharField(max_length=100, unique=True)
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="sessions"
    )
    job = models.OneToOneField(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="session")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    lineage_hash = models.CharField(max_length=64, help_text="The conversation up to this answer.")
    turns = models.PositiveIntegerField(default=1)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    cache_read_input_tokens = models.PositiveIntegerField(null=True, blank=True)
    size_bytes = models.PositiveIntegerField(default=0, help_text="The session file's size.")
    content = models.BinaryField(
        null=True, blank=True, help_text="The session file; empty when it was over SESSION_MAX_BYTES."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["-last_used_at"]
        indexes = [
            # The /v1 lookup: a replayed history's lineage among this key's sessions.
            models.Index(fields=["lineage_hash", "api_key"], name="session_lineage_key_idx"),
            models.Index(fields=["expires_at"], name="session_expires_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.cli_session_id} (turn {self.turns})"

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()


class QueryRequest(models.Model):
    """Every submission, whatever its outcome: the database is the record."""

    class Outcome(models.TextChoices):
        QUEUED = "queued", "Queued (new job)"
        DEDUPLICATED = "deduplicated", "Joined an in-flight job"
        CACHED = "cached", "Answered from cache"

    class Api(models.TextChoices):
        NATIVE = "native", "Native (/api/query)"
        ANTHROPIC = "anthropic", "Anthropic Messages (/v1/messages)"
        OPENAI = "openai", "OpenAI Chat Completions (/v1/chat/completions)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Every cache hit inserts a row, so the table keeps only the indexes its reads need: the two
    # foreign keys lead the composite indexes below, and the hash is only ever compared whole.
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="requests", db_index=False
    )
    api = models.CharField(
        max_length=16, choices=Api.choices, default=Api.NATIVE, help_text="The API the request came through."
    )
    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="requests", db_index=False)
    query = models.TextField()
    hash = models.CharField(max_length=64)
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.NORMAL)
    model = models.CharField(max_length=100, blank=True, default="")
    webhook_url = models.CharField(max_length=2048, blank=True, default="")
    metadata = models.JSONField(null=True, blank=True)
    no_cache = models.BooleanField(default=False)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The visibility check of GET /api/query/{jobId}: does one of this key's requests point here?
            models.Index(fields=["job", "api_key"], name="request_job_key_idx"),
            models.Index(fields=["api_key", "created_at"], name="request_key_created_idx"),
            models.Index(fields=["hash"], name="request_hash_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.id} → {self.job_id} ({self.outcome})"


def response_format(text: str) -> str:
    """``json`` when the answer text is a JSON object or array, else ``text``.

    A bare number or word ("4", "true") parses as JSON too, but callers asked a question and got a
    short answer: that is text, as the original gateway reported it.
    """
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return "text"
    try:
        json.loads(stripped)
    except ValueError:
        return "text"
    return "json"


def _model_from_output(output: dict | None) -> str | None:
    usage = (output or {}).get("modelUsage")
    if isinstance(usage, dict) and usage:
        return next(iter(usage))
    return None
