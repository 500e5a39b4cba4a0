"""Settings for the Claude gateway, driven by environment variables (see README, "Configuration")."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from core.env import (
    env_args,
    env_bool,
    env_float,
    env_int,
    env_int_list,
    env_list,
    env_str,
)

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
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_rq",
    "django_prometheus",
    "core",
    "queries",
    "routing",
    "webhooks",
]

MIDDLEWARE = [
    "core.middleware.BodySizeLimitMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

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
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=True)}
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
CACHE_ENABLED = env_bool("CACHE_ENABLED", True)
CACHE_TTL = env_int("CACHE_TTL", 3600, minimum=1)
DEDUP_ENABLED = env_bool("DEDUP_ENABLED", True)
DEDUP_TTL = env_int("DEDUP_TTL", 300, minimum=1)
QUEUE_CONCURRENCY = env_int("QUEUE_CONCURRENCY", 5, minimum=1, maximum=256)
MCP_ENABLED = env_bool("MCP_ENABLED", True)
ROUTING_REFRESH_SECONDS = env_float("ROUTING_REFRESH_SECONDS", 1.0, minimum=0.0)
METRICS_ENABLED = env_bool("METRICS_ENABLED", True)
ADMIN_ENABLED = env_bool("ADMIN_ENABLED", True)
GATEWAY_REQUIRE_AUTH = env_bool("GATEWAY_REQUIRE_AUTH", True)

# The Claude CLI
CLAUDE_BIN = env_str("CLAUDE_BIN", "claude")
CLAUDE_TIMEOUT = env_float("CLAUDE_TIMEOUT", 120.0, minimum=0.1)
CLAUDE_KILL_GRACE = env_float("CLAUDE_KILL_GRACE", 5.0, minimum=0.0)
CLAUDE_EXTRA_ARGS = env_args("CLAUDE_EXTRA_ARGS")
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

# Webhooks
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", False)
WEBHOOK_TIMEOUT = env_float("WEBHOOK_TIMEOUT", 15.0, minimum=0.1)
WEBHOOK_SECRET = env_str("WEBHOOK_SECRET", "")
WEBHOOK_RETRY_SCHEDULE = env_int_list(
    "WEBHOOK_RETRY_SCHEDULE", [0, 5, 300, 1800, 7200, 18000, 36000, 36000], minimum=0
)

# rq: one queue per priority, taken in this order by every worker. A job's own timeout is the CLI's
# plus room for the group kill and bookkeeping, so rq never kills a work horse that is still cleaning up.
RQ_QUEUE_NAMES = ["high", "default", "low"]
RQ_JOB_TIMEOUT = int(CLAUDE_TIMEOUT + CLAUDE_KILL_GRACE + 60)
RQ_QUEUES = {name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": RQ_JOB_TIMEOUT} for name in RQ_QUEUE_NAMES}
RQ_SHOW_ADMIN_LINK = True
RQ = {"WORKER_CLASS": "queries.worker.GatewayWorker"}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["queries.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["queries.auth.HasApiKey"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
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

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
