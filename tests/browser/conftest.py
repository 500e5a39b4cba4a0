"""The browser tests' fixtures: the real gunicorn server with collected static files, and a page.

Each test gets its own Chromium (Debian's, driven by Playwright) with a 1366×768 window; a test that
fails leaves a screenshot of that moment in ``test-artifacts/browser/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connections

from tests.support import REPO
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, PASSWORD, VIEWPORT, shoot
from tests.support.processes import start_web_server


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Lets the page fixture take a screenshot of the moment a browser test failed.
    report = yield
    if report.when == "call":
        item.browser_call_failed = report.failed
    return report


@pytest.fixture(scope="session")
def static_var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A var directory with the collected static files, as scripts/serve prepares for production."""
    var = tmp_path_factory.mktemp("var")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "GATEWAY_VAR_DIR": str(var)}
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return var


@pytest.fixture
def server(transactional_db, redis_db, mock, tmp_path, processes, static_var_dir) -> str:
    return start_web_server(processes, mock, tmp_path, GATEWAY_VAR_DIR=str(static_var_dir))


@pytest.fixture
def page(server, request, monkeypatch) -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread while it is open, and Django refuses ORM
    # calls when it sees one; the tests' own ORM calls between browser steps are plain blocking calls.
    # The browser is per test so that the loop is gone before the database is flushed.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(base_url=server, viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.foreign_requests = []
        page.on(
            "request", lambda r: None if r.url.startswith(server) else page.foreign_requests.append(r.url)
        )
        page.shot = lambda step: shoot(page, request.node.name, step)
        try:
            yield page
        finally:
            if getattr(request.node, "browser_call_failed", False):
                shoot(page, request.node.name, "failure")
            # Connections the test opened while the loop ran belong to that context: close them here,
            # or the test database cannot be dropped at the end of the session.
            connections.close_all()
            context.close()
            browser.close()


@pytest.fixture
def operator_login(db) -> User:
    return User.objects.create_superuser("operator", "op@example.com", PASSWORD)
