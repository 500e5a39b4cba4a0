"""Settings for the test suite: the real PostgreSQL and Redis on this machine, isolated names."""

import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gateway")
# A Redis database of its own, flushed between tests; never the one a developer's gateway uses.
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("GATEWAY_VAR_DIR", os.path.join(tempfile.gettempdir(), "claude-gateway-tests"))
os.environ.setdefault(
    "CLAUDE_WORKDIR", os.path.join(tempfile.gettempdir(), "claude-gateway-tests", "workdir")
)
os.environ.setdefault("WEBHOOK_ALLOW_PRIVATE", "false")

from gateway_project.settings import *  # noqa: E402,F403

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405
# The test process writes journaled cache hits itself (queries.journal.journal_drain): a recorder thread
# would use a connection of its own, outside the test's transaction. Gateway processes that tests start
# (gunicorn, workers) run their recorders, as in production.
JOURNAL_RECORDER = os.environ.get("GATEWAY_TEST_JOURNAL_RECORDER") == "true"
