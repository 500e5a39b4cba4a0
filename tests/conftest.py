"""Fixtures, and the rule that marks `services` every test that needs the real Redis or PostgreSQL.

The code behind the fixtures is in ``tests/support``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from redis import Redis
from rest_framework.test import APIClient

from core.redis import redis_client
from queries import services
from queries.models import ApiKey
from tests.mockapi import MockAnthropic
from tests.support.processes import (
    FAKE_CLAUDE,
    Processes,
    cli_environment,
    real_claude_bin,
    start_web_server,
    start_worker,
)

# A test that asks for one of these, directly or through other fixtures, uses PostgreSQL or Redis.
SERVICE_FIXTURES = {"db", "transactional_db", "django_db_setup", "redis_db"}
# Tests with these marks use them too (e2e and browser tests run the gateway's own processes).
SERVICE_MARKS = ("django_db", "e2e", "browser")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `services` what uses the database, Redis or the gateway's processes, before -m selects."""
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())) or any(
            item.get_closest_marker(name) for name in SERVICE_MARKS
        ):
            item.add_marker(pytest.mark.services)


@pytest.fixture
def redis_db() -> Redis:
    """The tests' Redis database (tests.settings picks db 15), emptied first: asked for by what uses Redis."""
    client = redis_client()
    client.flushdb()
    return client


@pytest.fixture
def api_key(db: None, redis_db: Redis) -> tuple[ApiKey, str]:
    # Creating a key announces it to every process's key cache through Redis.
    return services.api_key_create(name="test")


@pytest.fixture
def client(api_key: tuple[ApiKey, str]) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key[1]}")
    return client


@pytest.fixture
def admin_client(admin_client, redis_db: Redis):
    """pytest-django's, on an empty Redis: logging in clears the admin login rate limit's count there."""
    return admin_client


@pytest.fixture(scope="session")
def mock_api() -> Iterator[MockAnthropic]:
    with MockAnthropic() as server:
        yield server


@pytest.fixture
def mock(mock_api: MockAnthropic) -> MockAnthropic:
    mock_api.reset()
    return mock_api


@pytest.fixture
def real_claude(
    mock: MockAnthropic, settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> MockAnthropic:
    """Point the runner at the real CLI, talking to the mock Anthropic API."""
    binary = real_claude_bin()
    if not Path(binary).exists():
        pytest.fail(f"the real claude CLI is not installed at {binary}; run scripts/bootstrap")
    home = tmp_path / "home"
    home.mkdir()
    settings.CLAUDE_BIN = binary
    settings.CLAUDE_WORKDIR = tmp_path / "workdir"
    for name, value in cli_environment(mock, home).items():
        monkeypatch.setenv(name, value)
    return mock


@pytest.fixture
def fake_claude(settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Point the runner at the fake CLI; returns a function that sets its mode."""
    settings.CLAUDE_BIN = str(FAKE_CLAUDE)
    settings.CLAUDE_WORKDIR = tmp_path / "workdir"

    def set_mode(mode: str, **env: str) -> None:
        monkeypatch.setenv("FAKE_CLAUDE_MODE", mode)
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    return set_mode


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


@pytest.fixture
def worker_process(
    transactional_db: None, redis_db: Redis, mock: MockAnthropic, tmp_path: Path, processes: Processes
):
    """Start real `manage.py rqworker` processes against the test database; returns a starter
    taking ``start_worker``'s keywords (claude_bin, env, pool)."""
    return functools.partial(start_worker, processes, mock, tmp_path)


@pytest.fixture
def web_server(
    transactional_db: None, redis_db: Redis, mock: MockAnthropic, tmp_path: Path, processes: Processes
) -> str:
    """The gateway served by gunicorn, as in production, against the test database; returns its URL."""
    return start_web_server(processes, mock, tmp_path)


@pytest.fixture
def http(web_server: str, api_key: tuple[ApiKey, str]) -> requests.Session:
    """A session on the web server with the test key; ``http.base`` is the server's URL."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=64))
    session.headers["Authorization"] = f"Bearer {api_key[1]}"
    session.base = web_server
    return session


@pytest.fixture
def seeded(db: None) -> None:
    """The default routes, as the data migrations make them (transactional tests empty the tables)."""
    import importlib

    from django.apps import apps

    from routing.services import routing_invalidate

    importlib.import_module("routing.migrations.0002_seed_default_routes").seed(apps, None)
    importlib.import_module("routing.migrations.0003_rule_exclusions_and_evidence_rules").update_seeded_rules(
        apps, None
    )
    routing_invalidate()
