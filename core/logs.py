"""Structured logs: one JSON object per line (or plain text), with requestId and jobId, secrets masked.

``requestId`` and ``jobId`` live in context variables. The web binds a fresh requestId per HTTP
request (``RequestContextMiddleware``; the new QueryRequest row takes the same id, so the id a client
gets back is the one to grep for) and the jobId once a submission knows its job; the worker binds both
while it runs a job (``log_context``). A filter copies them onto every record, whichever logger made it.

Secrets are masked in the formatter, on the final text, so a secret reaches no log line whatever path
it took (a message argument, an exception, the CLI's stderr): API keys, bearer tokens, webhook secrets
and Anthropic keys by their shape, and literal values registered with ``secret_register``
(MCP servers' env and header values, the process's own ANTHROPIC_API_KEY, WEBHOOK_SECRET...).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

MASK = "[REDACTED]"
# Environment variables whose values are secrets in every process that has them.
SECRET_ENV_VARS = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "WEBHOOK_SECRET",
    "SECRET_KEY",
    "METRICS_TOKEN",
)
STDERR_LOG_CHARS = 2000
_MIN_SECRET_CHARS = 6
_MAX_REGISTERED = 2000

_PATTERNS = [
    # API keys the gateway issues (queries.models.ApiKey.PREFIX).
    re.compile(r"cgw_[A-Za-z0-9_\-]{8,}"),
    # Standard Webhooks secrets, Anthropic keys.
    re.compile(r"whsec_[A-Za-z0-9+/=_\-]{8,}"),
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    # Credentials after an auth scheme or in a URL's userinfo.
    re.compile(r"(?i)(?<=bearer )[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"(?i)(?<=basic )[A-Za-z0-9+/=]{8,}"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),
]

_request_id: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "request_id", default=None
)
_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

_secrets: set[str] = set()
_secrets_pattern: re.Pattern[str] | None = None
_secrets_lock = threading.Lock()


# --- context -------------------------------------------------------------------------------------------


def request_id() -> str | None:
    slot = _request_id.get()
    if not slot:
        return None
    # Every line of the request asks for it (the filter, the formatter): format it once.
    text = slot.get("text")
    if text is None:
        text = slot["text"] = str(slot["id"])
    return text


def job_id() -> str | None:
    return _job_id.get()


def request_id_claim() -> uuid.UUID:
    """The id for a new QueryRequest row: this HTTP request's requestId the first time, else a new one.

    One HTTP request records at most one QueryRequest, so its log lines and its row share the id.
    """
    slot = _request_id.get()
    if slot is None or slot["claimed"]:
        return uuid.uuid4()
    slot["claimed"] = True
    return slot["id"]


def bind(*, job_id: object | None = None) -> None:
    """Attach a jobId to the rest of this context (the web learns it midway through a request)."""
    if job_id is not None:
        _job_id.set(str(job_id))


@contextlib.contextmanager
def log_context(*, request_id: object | None = None, job_id: object | None = None) -> Iterator[None]:
    """Bind requestId and jobId for the duration of the block."""
    slot = None
    if request_id is not None:
        try:
            slot = {"id": uuid.UUID(str(request_id)), "claimed": True}
        except ValueError:
            slot = None
    request_token = _request_id.set(slot)
    job_token = _job_id.set(str(job_id) if job_id is not None else None)
    try:
        yield
    finally:
        _job_id.reset(job_token)
        _request_id.reset(request_token)


class RequestContextMiddleware:
    """A requestId per HTTP request, bound for its log lines and returned as ``X-Request-ID``.

    It also writes one access line per request (method, path, status, duration), which carries the
    jobId when the request submitted or read a job.
    """

    def __init__(self, get_response: Callable[[Any], Any]):
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        with request_scope() as request_id:
            started = time.perf_counter()
            response = self.get_response(request)
            response["X-Request-ID"] = str(request_id)
            access_line(request, response, started)
            return response


_access_log = logging.getLogger("gateway.access")


@contextlib.contextmanager
def request_scope() -> Iterator[uuid.UUID]:
    """A fresh requestId (and no jobId) for the block: one HTTP request."""
    request_id = uuid.uuid4()
    request_token = _request_id.set({"id": request_id, "claimed": False})
    job_token = _job_id.set(None)
    try:
        yield request_id
    finally:
        _job_id.reset(job_token)
        _request_id.reset(request_token)


def access_line(request: Any, response: Any, started: float) -> None:
    """The request's access-log line: method, path, status and duration (with requestId and jobId)."""
    if _access_log.isEnabledFor(logging.INFO):
        _access_log.info(
            "%s %s %s %.1fms",
            request.method,
            request.path[:200],
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )


class ContextFilter(logging.Filter):
    """Puts requestId and jobId on every record (None outside a request or job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "requestId", None) is None:
            record.requestId = request_id()
        if getattr(record, "jobId", None) is None:
            record.jobId = job_id()
        return True


# --- secrets ---------------------------------------------------------------------------------------------


def secret_register(value: object) -> None:
    """Mask this literal value wherever it appears in a log line of this process."""
    global _secrets_pattern
    if not isinstance(value, str) or len(value.strip()) < _MIN_SECRET_CHARS:
        return
    value = value.strip()
    with _secrets_lock:
        if value in _secrets or len(_secrets) >= _MAX_REGISTERED:
            return
        _secrets.add(value)
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secrets_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def secrets_register_mcp(config: dict[str, Any] | None) -> None:
    """Register the env and header values of an ``--mcp-config`` object (tokens, passwords)."""
    for server in ((config or {}).get("mcpServers") or {}).values():
        if not isinstance(server, dict):
            continue
        for section in ("env", "headers"):
            values = server.get(section)
            if isinstance(values, dict):
                for value in values.values():
                    secret_register(value)


def secrets_register_environment(environ: Mapping[str, str] | None = None) -> None:
    environ = os.environ if environ is None else environ
    for name in SECRET_ENV_VARS:
        secret_register(environ.get(name))
    database_url = environ.get("DATABASE_URL", "")
    match = re.search(r"://[^/\s:@]+:([^/\s@]+)@", database_url)
    if match:
        secret_register(match.group(1))


def redact(text: str) -> str:
    pattern = _secrets_pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for known in _PATTERNS:
        text = known.sub(MASK, text)
    return text


# --- formatting ------------------------------------------------------------------------------------------

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "requestId", "jobId"}


def _utc_seconds(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, requestId, jobId, extras, exception.

    Every request writes a line (the access line), so the constant work is done once: the time's
    date and seconds once a second, and the record's extras looked for only when it has any.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._second = -1
        self._second_text = ""

    def _time(self, created: float) -> str:
        # datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"), byte for byte:
        # the same rounding to the microsecond, then truncated to the millisecond.
        second = int(created)
        micros = round((created - second) * 1e6)
        if micros >= 1_000_000:
            second += 1
            micros -= 1_000_000
        if second != self._second:
            self._second_text = _utc_seconds(second)
            self._second = second
        return f"{self._second_text}.{micros // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "requestId": getattr(record, "requestId", None) or request_id(),
            "jobId": getattr(record, "jobId", None) or job_id(),
            "pid": record.process,
        }
        if record.__dict__.keys() - _RESERVED:
            for key, value in record.__dict__.items():
                if key not in _RESERVED and not key.startswith("_"):
                    entry[key] = _redacted(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Plain lines for a terminal, with the same ids and the same masking."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ids)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [
            f"{name}={value}"
            for name, value in (
                ("requestId", getattr(record, "requestId", None) or request_id()),
                ("jobId", getattr(record, "jobId", None) or job_id()),
            )
            if value
        ]
        record.ids = f" [{' '.join(ids)}]" if ids else ""
        extras = {
            key: value
            for key, value in record.__dict__.items()
            if key not in _RESERVED and key != "ids" and not key.startswith("_")
        }
        text = super().format(record)
        for key, value in extras.items():
            text += f"\n  {key}: {value}"
        return redact(text)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def logging_config(*, level: str = "INFO", fmt: str = "json", secrets: Iterable[str] = ()) -> dict[str, Any]:
    """Django's LOGGING: everything to stderr, as JSON lines or plain text. ``secrets`` are masked."""
    secrets_register_environment()
    for secret in secrets:
        secret_register(secret)
    # Python's warnings (deprecations, whitenoise's missing directory) in the same shape, not raw stderr.
    logging.captureWarnings(True)
    # No line shows where it was logged from, nor the thread's or process's name: don't collect them
    # for every record (the logging HOWTO's "Optimization"; the pid stays, it is in every line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "core.logs.ContextFilter"}},
        "formatters": {
            "json": {"()": "core.logs.JsonFormatter"},
            "text": {"()": "core.logs.TextFormatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": fmt,
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "WARNING"},
            # Django's own request logger repeats what the access line and the error line already say.
            "django.request": {"level": "ERROR"},
        },
    }


def gunicorn_logconfig(*, level: str = "INFO", fmt: str = "json", access: bool = False) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its error log (and access log, if wanted) shaped like the app's.

    The application writes its own access line per request (``RequestContextMiddleware``), with the
    requestId; gunicorn's would repeat it, so it is off unless asked for.
    """
    config = logging_config(level=level, fmt=fmt)
    config["loggers"] = {
        "gunicorn.error": {"level": level, "handlers": ["console"], "propagate": False},
        "gunicorn.access": {
            "level": level if access else "CRITICAL",
            "handlers": ["console"] if access else [],
            "propagate": False,
        },
    }
    return config


# --- what the pipeline logs --------------------------------------------------------------------------------


def job_failure_log(*, job: Any) -> None:
    """One warning per failed job, with the CLI's exit code and the tail of its stderr (capped)."""
    if str(job.state) != "failed":
        return
    stderr = (job.stderr_tail or "")[-STDERR_LOG_CHARS:]
    logging.getLogger("queries.jobs").warning(
        "job %s failed: %s: %s",
        job.id,
        job.error_type,
        (job.error_message or "")[:500],
        extra={
            "jobId": str(job.id),
            "errorType": job.error_type,
            "exitCode": job.exit_code,
            "stderrTail": stderr,
        },
    )
