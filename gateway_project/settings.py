"""Settings for the Claude gateway, driven by environment variables (see README, "Configuration")."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from claude_cli.invocation import reserved_args_used
from core import cli_tools
from core.env import (
    env_args,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_int_list,
    env_list,
    env_str,
)
from core.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("GATEWAY_VAR_DIR", str(BASE_DIR / "var")))


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once and kept in the var directory."""
    key = env_str("SECRET_KEY", "")
    if key:
        return key
    path = VAR_DIR / "secret_key"
    if path.exists():
        return path.read_text().strip()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    path.write_text(key)
    path.chmod(0o600)
    return key


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
PORT = env_int("PORT", 3000, minimum=1, maximum=65535)

INSTALLED_APPS = [
    # django.contrib.admin with the gateway's site: the dashboard on the index and the cache page.
    "console.apps.GatewayAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_rq",
    "django_prometheus",
    "core",
    "routing",
    "queries",
    "compat",
    "webhooks",
    "console.apps.ConsoleConfig",
]

MIDDLEWARE = [
    "core.logs.RequestContextMiddleware",
    "core.limits.JsonErrorPagesMiddleware",
    "core.limits.RequestLimitsMiddleware",
    "compat.limits.V1BodyLimitMiddleware",
    "core.middleware.BodySizeLimitMiddleware",
    "core.middleware.HttpMetricsMiddleware",
    "core.middleware.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "core.admin_login.AdminLoginThrottleMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# Only the admin and static pages need these; requests under API_PATH_PREFIXES skip them (core/handlers.py).
BROWSER_MIDDLEWARE = {
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "core.admin_login.AdminLoginThrottleMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
}
API_PATH_PREFIXES = ("/api/", "/v1/", "/health", "/ready", "/metrics")
# Answered, when they can be, before Django's handler runs (core/handlers.py).
FAST_PATHS = {
    ("POST", "/api/query"): "queries.hits.cache_hit_response",
    ("POST", "/v1/messages"): "compat.hits.messages_cache_hit_response",
    ("POST", "/v1/chat/completions"): "compat.hits.chat_cache_hit_response",
}
# The same fast paths as coroutines answered on the ASGI event loop without a thread (core/asgi.py):
# each returns the reply, None (the full path), or core.handlers.ON_THREAD (FAST_PATHS' function).
LOOP_FAST_PATHS = {("POST", "/api/query"): "queries.hits.cache_hit_response_on_loop"}

# Threads per web process for everything but async views (core/asgi.py).
WEB_THREADS = env_int("WEB_THREADS", 4, minimum=1, maximum=256)

ROOT_URLCONF = "gateway_project.urls"
WSGI_APPLICATION = "gateway_project.wsgi.application"
ASGI_APPLICATION = "gateway_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: a SQLite file by default so the gateway starts with no database server.
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'gateway.sqlite3'}")
try:
    # No health checks: they cost a round trip (SELECT 1) on every request, a quarter of a cache hit's
    # database time. A connection that a database restart broke fails one request and is replaced.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=False)}
except Exception as exc:  # dj_database_url raises several types for a malformed URL
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # The web server and workers write at once: WAL lets readers proceed, IMMEDIATE takes the write
    # lock at BEGIN so two writers queue on the busy timeout instead of failing mid-transaction.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis: cache entries, dedup marks and the rq queues.
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"REDIS_URL must start with redis://, rediss:// or unix://, got {REDIS_URL!r}")
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "gateway",
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 5,
        },
    }
}

# Pipeline
QUERY_MAX_CHARS = env_int("QUERY_MAX_CHARS", 100_000, minimum=1)
METADATA_MAX_BYTES = env_int("METADATA_MAX_BYTES", 16 * 1024, minimum=2)
REQUEST_MAX_BYTES = env_int("REQUEST_MAX_BYTES", 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = REQUEST_MAX_BYTES
# What the web reads and drops of a body it answered without reading (a 413) before the response ends,
# so the close is not a TCP reset that loses the JSON 413 (core.asgi_body.DrainUnreadBody); bigger
# or slower bodies are cut off.
REQUEST_DISCARD_MAX_BYTES = env_int("REQUEST_DISCARD_MAX_BYTES", 16 * 1024 * 1024, minimum=0)
REQUEST_DISCARD_SECONDS = env_float("REQUEST_DISCARD_SECONDS", 10.0, minimum=0.0)
# Paths with a body limit of their own (V1_MAX_BODY_BYTES, compat/limits.py).
REQUEST_MAX_BYTES_EXEMPT = ("/v1/",)
CACHE_ENABLED = env_bool("CACHE_ENABLED", True)
CACHE_TTL = env_int("CACHE_TTL", 3600, minimum=1)
# A cache hit's QueryRequest row goes through the Redis stream journal:requests and is written in
# batches by the workers every WORKER_HEARTBEAT_INTERVAL (queries/services/journal.py); false writes
# it in the request.
CACHE_HIT_JOURNAL = env_bool("CACHE_HIT_JOURNAL", True)
# How often a web process's recorder writes the journal while no worker is alive to.
JOURNAL_FLUSH_INTERVAL = env_float("JOURNAL_FLUSH_INTERVAL", 0.2, minimum=0.01)
# Each web process keeps that recorder thread (tests drain the journal themselves).
JOURNAL_RECORDER = True
# A job's live events (queries/services/events.py): the stream job:{id}:events lives EVENTS_TTL
# seconds after its last entry and keeps about its last EVENTS_MAXLEN entries; open streams send a
# keep-alive every EVENTS_PING_SECONDS.
EVENTS_TTL = env_int("EVENTS_TTL", 3600, minimum=1)
EVENTS_MAXLEN = env_int("EVENTS_MAXLEN", 10_000, minimum=100)
EVENTS_PING_SECONDS = env_float("EVENTS_PING_SECONDS", 15.0, minimum=0.1)
# Each open stream waiting for its job's next event holds one Redis connection (blocking XREAD).
EVENTS_MAX_READERS = env_int("EVENTS_MAX_READERS", 4000, minimum=10)
DEDUP_ENABLED = env_bool("DEDUP_ENABLED", True)
DEDUP_TTL = env_int("DEDUP_TTL", 300, minimum=1)
QUEUE_CONCURRENCY = env_int("QUEUE_CONCURRENCY", 5, minimum=1, maximum=256)
MCP_ENABLED = env_bool("MCP_ENABLED", True)
ROUTING_REFRESH_SECONDS = env_float("ROUTING_REFRESH_SECONDS", 1.0, minimum=0.0)
METRICS_ENABLED = env_bool("METRICS_ENABLED", True)
# Optional bearer token that /metrics requires (Prometheus: authorization.credentials_file).
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
if METRICS_ENABLED:
    # django-prometheus's subclasses of the same backends: query and cache counts and latency on /metrics.
    DATABASES["default"]["ENGINE"] = DATABASES["default"]["ENGINE"].replace(
        "django.db.backends.", "django_prometheus.db.backends."
    )
    CACHES["default"]["BACKEND"] = "django_prometheus.cache.backends.redis.RedisCache"
ADMIN_ENABLED = env_bool("ADMIN_ENABLED", True)
GATEWAY_REQUIRE_AUTH = env_bool("GATEWAY_REQUIRE_AUTH", True)
# How long a process may reuse an API key row it read (queries/auth.py); any change to a key ends it.
API_KEY_CACHE_SECONDS = env_float("API_KEY_CACHE_SECONDS", 60.0, minimum=0.0)

# The /v1/ APIs (README, "/v1 APIs"): Anthropic Messages and OpenAI Chat Completions (compat/).
# The public Messages API takes bodies up to 32 MB and images up to 5 MB, 100 to a request.
V1_MAX_BODY_BYTES = env_int("V1_MAX_BODY_BYTES", 32 * 1024 * 1024, minimum=1024)
V1_MAX_MESSAGES = env_int("V1_MAX_MESSAGES", 1000, minimum=1)
V1_MAX_IMAGE_BYTES = env_int("V1_MAX_IMAGE_BYTES", 5 * 1024 * 1024, minimum=1)
V1_MAX_IMAGES = env_int("V1_MAX_IMAGES", 100, minimum=0)
# System prompt, earlier turns and the last message together, in characters.
V1_MAX_PROMPT_CHARS = env_int("V1_MAX_PROMPT_CHARS", 1_000_000, minimum=1)
# What GET /v1/models lists and the only models a /v1/ call may name (empty: any model).
V1_MODELS = env_list("V1_MODELS", ["claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5"])
# A stream's keep-alive (Anthropic ping events, OpenAI SSE comments) while its job waits or runs.
V1_PING_SECONDS = env_float("V1_PING_SECONDS", 10.0, minimum=0.05)
# How long a /v1/ call waits for its job before it answers 504 (the job goes on and is cached).
V1_MAX_WAIT_SECONDS = env_float("V1_MAX_WAIT_SECONDS", 600.0, minimum=0.1)

# Security and limits (README, "Security and limits")
# "key": cached answers and in-flight jobs are shared only among one key's own submissions.
CACHE_SCOPE = env_choice("CACHE_SCOPE", "key", ("key", "global"))
METADATA_MAX_DEPTH = env_int("METADATA_MAX_DEPTH", 8, minimum=1, maximum=64)
URL_MAX_CHARS = env_int("URL_MAX_CHARS", 2048, minimum=256, maximum=8000)
HEADERS_MAX_BYTES = env_int("HEADERS_MAX_BYTES", 16 * 1024, minimum=1024)
ADMIN_LOGIN_MAX_FAILURES = env_int("ADMIN_LOGIN_MAX_FAILURES", 5, minimum=1)
ADMIN_LOGIN_LOCKOUT_SECONDS = env_int("ADMIN_LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Load balancers and Prometheus probe these over plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", SECURE_SSL_REDIRECT)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", SECURE_SSL_REDIRECT)
# Only behind a proxy that sets X-Forwarded-Proto itself: a client could otherwise claim https.
if env_bool("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# The Claude CLI
# Unset: `claude` on PATH, else the pinned CLI in node_tools/, whoever started the process.
CLAUDE_BIN = cli_tools.claude_bin(env_str("CLAUDE_BIN", ""))
# Appended to the CLI's PATH where missing, so the MCP servers' commands are found there too.
CLAUDE_TOOL_DIRS = cli_tools.tool_dirs()
CLAUDE_TIMEOUT = env_float("CLAUDE_TIMEOUT", 120.0, minimum=0.1)
CLAUDE_KILL_GRACE = env_float("CLAUDE_KILL_GRACE", 5.0, minimum=0.0)
CLAUDE_EXTRA_ARGS = env_args("CLAUDE_EXTRA_ARGS")
if _reserved := reserved_args_used(CLAUDE_EXTRA_ARGS):
    raise ImproperlyConfigured(
        f"CLAUDE_EXTRA_ARGS may not set {', '.join(_reserved)}: the gateway sets the CLI's session options"
    )
CLAUDE_MAX_OUTPUT_BYTES = env_int("CLAUDE_MAX_OUTPUT_BYTES", 10 * 1024 * 1024, minimum=1024)
CLAUDE_WORKDIR = Path(
    env_str(
        "CLAUDE_WORKDIR",
        str(
            Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
            / "claude-gateway"
            / "workdir"
        ),
    )
).expanduser()
CLAUDE_DISABLE_NONESSENTIAL_TRAFFIC = env_bool("CLAUDE_DISABLE_NONESSENTIAL_TRAFFIC", True)
# The upstream circuit breaker (queries/services/breaker.py): failures in a row of one kind that open
# it, and for how long (seconds) before one probe job may close it.
BREAKER_ENABLED = env_bool("BREAKER_ENABLED", True)
BREAKER_THRESHOLD = env_int("BREAKER_THRESHOLD", 3, minimum=1)
BREAKER_COOLDOWN = env_float("BREAKER_COOLDOWN", 30.0, minimum=0.1)
# Warm CLI pool (queries/pool.py): CLIs each worker process keeps started per model and MCP server
# set, how old one may get before it is replaced (s), and how many such keys a worker keeps warm.
CLAUDE_POOL_SIZE = env_int("CLAUDE_POOL_SIZE", 1, minimum=0, maximum=16)
CLAUDE_POOL_MAX_AGE = env_float("CLAUDE_POOL_MAX_AGE", 300.0, minimum=4.0)
CLAUDE_POOL_KEYS = env_int("CLAUDE_POOL_KEYS", 4, minimum=1, maximum=64)
# Conversations (README, "Conversations"): a turn continues the CLI session of an earlier answer. The
# session file is kept in PostgreSQL after each turn (at most SESSION_MAX_BYTES of it) for SESSION_TTL
# seconds after its last use; false runs every CLI with --no-session-persistence.
SESSIONS_ENABLED = env_bool("SESSIONS_ENABLED", True)
SESSION_TTL = env_int("SESSION_TTL", 7 * 24 * 3600, minimum=60)
SESSION_MAX_BYTES = env_int("SESSION_MAX_BYTES", 8 * 1024 * 1024, minimum=1024)

# Webhooks
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", False)
WEBHOOK_TIMEOUT = env_float("WEBHOOK_TIMEOUT", 15.0, minimum=0.1)
WEBHOOK_SECRET = env_str("WEBHOOK_SECRET", "")
if WEBHOOK_SECRET:
    from webhooks.signing import secret_key_bytes  # pure: no models, safe to import from settings

    try:
        secret_key_bytes(WEBHOOK_SECRET)
    except ValueError as exc:
        raise ImproperlyConfigured(f"WEBHOOK_SECRET {exc}") from None
WEBHOOK_RETRY_SCHEDULE = env_int_list(
    "WEBHOOK_RETRY_SCHEDULE", [0, 5, 300, 1800, 7200, 18000, 36000, 36000], minimum=0
)
# How often workers re-queue webhook deliveries that are due (the sweeper; also `manage.py reconcile`).
WEBHOOK_SWEEP_INTERVAL = env_int("WEBHOOK_SWEEP_INTERVAL", 60, minimum=5)
# Workers heartbeat this often, idle or running a job; one unheard of for WORKER_STALE_AFTER seconds
# counts as dead (/ready, the dashboard, reconciliation) even while its registration lasts.
WORKER_HEARTBEAT_INTERVAL = env_int("WORKER_HEARTBEAT_INTERVAL", 5, minimum=1, maximum=60)
WORKER_STALE_AFTER = env_int("WORKER_STALE_AFTER", 3 * WORKER_HEARTBEAT_INTERVAL + 5, minimum=2)
if WORKER_STALE_AFTER <= WORKER_HEARTBEAT_INTERVAL:
    raise ImproperlyConfigured("WORKER_STALE_AFTER must be longer than WORKER_HEARTBEAT_INTERVAL")
# A worker told to stop lets its running job finish for this long, then stops it and queues it again
# (scripts/serve's supervisor kills what is left 5 s after Ctrl-C).
WORKER_STOP_GRACE = env_float("WORKER_STOP_GRACE", 2.0, minimum=0.0)

# rq: one queue per priority, taken in this order by every worker. A job's own timeout is the CLI's
# plus room for the group kill and bookkeeping, so rq never kills a work horse that is still cleaning up.
RQ_QUEUE_NAMES = ["high", "default", "low"]
RQ_JOB_TIMEOUT = int(CLAUDE_TIMEOUT + CLAUDE_KILL_GRACE + 60)
RQ_QUEUES = {name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": RQ_JOB_TIMEOUT} for name in RQ_QUEUE_NAMES}
RQ_SHOW_ADMIN_LINK = True
# Jobs run in the worker process itself; WORKER_FORK forks a work horse per job (queries/worker.py).
WORKER_FORK = env_bool("WORKER_FORK", False)
RQ = {
    "WORKER_CLASS": "queries.worker.GatewayWorker" if WORKER_FORK else "queries.worker.GatewayInProcessWorker"
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["queries.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["queries.auth.HasApiKey"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "core.parsers.JsonNegotiation",
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# OpenAPI: /api/schema/ and /api/docs/ (Swagger UI from the sidecar's static files: no CDN).
SPECTACULAR_SETTINGS = {
    "TITLE": "Claude gateway API",
    "DESCRIPTION": "Queries answered by the Claude Code CLI: cached, deduplicated and queued by priority.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "queries.schema.add_plain_django_paths",
        "compat.schema.add_v1_paths",
    ],
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# The admin's dates and times (lists, detail pages, the dashboard) to the second, in one format:
# English's own DATETIME_FORMAT stops at the minute, and a locale's format wins over settings.
FORMAT_MODULE_PATH = ["gateway_project.formats"]

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # whitenoise's compressed manifest storage; before collectstatic (or for a file collected
    # later), plain URLs that whitenoise serves from the apps (core/staticfiles.py, gateway.W002).
    "staticfiles": {"BACKEND": "core.staticfiles.GatewayStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
LOG_FORMAT = env_choice("LOG_FORMAT", "json", ("json", "text"))
LOGGING = logging_config(level=LOG_LEVEL, fmt=LOG_FORMAT, secrets=(SECRET_KEY, WEBHOOK_SECRET, METRICS_TOKEN))
