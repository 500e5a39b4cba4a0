"""Static files on the path operators take: install, migrate, gunicorn, with or without collectstatic.

The server runs with the production settings (whitenoise's manifest storage) and a fresh var
directory, so nothing the test suite's own settings or collected files provide helps it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.core.checks import run_checks

from tests.support import REPO
from tests.support.processes import process_environment, start_web_server


def fresh_install(tmp_path: Path) -> dict[str, str]:
    var = tmp_path / "var"
    return {
        "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        "GATEWAY_VAR_DIR": str(var),
        "DATABASE_URL": f"sqlite:///{var / 'gateway.sqlite3'}",
    }


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )


def assets(html: str) -> list[str]:
    return re.findall(r'(?:href|src)="(/static/[^"]+)"', html)


def page_and_assets(url: str, path: str) -> list[str]:
    """GET a page and everything under /static/ it links; all must be served. Returns the asset paths."""
    page = requests.get(url + path, timeout=10)
    assert page.status_code == 200, (path, page.status_code, page.text[:500])
    assert page.headers["Content-Type"].startswith("text/html")
    linked = assets(page.text)
    assert linked, path
    for asset in linked:
        response = requests.get(url + asset, timeout=10)
        assert response.status_code == 200, (path, asset, response.status_code)
    return linked


@pytest.mark.e2e
def test_admin_and_docs_are_served_before_and_after_collectstatic(mock, tmp_path, processes):
    install = fresh_install(tmp_path)
    env = process_environment(mock, tmp_path / "home", tmp_path / "workdir", **install)

    migrated = manage(env, "migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    # The operator is told what is missing and how to fix it.
    assert "gateway.W002" in migrated.stdout + migrated.stderr
    assert "collectstatic" in migrated.stdout + migrated.stderr
    assert not (tmp_path / "var" / "static").exists()

    url = start_web_server(processes, mock, tmp_path, **install)
    linked = page_and_assets(url, "/admin/login/")
    assert "/static/admin/css/base.css" in linked  # plain names, served from the apps
    page_and_assets(url, "/api/docs/")
    processes.stop_all()

    collected = manage(env, "collectstatic", "--noinput")
    assert collected.returncode == 0, collected.stderr[-2000:]
    assert "gateway.W002" not in collected.stdout + collected.stderr
    assert "gateway.W002" not in manage(env, "check").stdout

    url = start_web_server(processes, mock, tmp_path, **install)
    linked = page_and_assets(url, "/admin/login/")
    hashed = [a for a in linked if re.search(r"/base\.[0-9a-f]{12}\.css$", a)]
    assert hashed, linked
    cached = requests.get(url + hashed[0], headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert "immutable" in cached.headers["Cache-Control"] and cached.headers.get("Content-Encoding") == "gzip"
    processes.stop_all()

    # A manifest collected before a file existed (an upgrade without collectstatic): still no 500.
    manifest_path = tmp_path / "var" / "static" / "staticfiles.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["paths"]["admin/css/login.css"]
    manifest_path.write_text(json.dumps(manifest))
    url = start_web_server(processes, mock, tmp_path, **install)
    linked = page_and_assets(url, "/admin/login/")
    assert "/static/admin/css/login.css" in linked


def test_the_missing_manifest_check_names_the_fix(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "core.staticfiles.GatewayStaticFilesStorage"},
    }
    settings.STATIC_ROOT = tmp_path / "static"
    [warning] = [m for m in run_checks() if m.id == "gateway.W002"]
    assert str(tmp_path / "static") in warning.msg and "collectstatic" in warning.hint
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "staticfiles.json").write_text('{"paths": {}, "version": "1.1", "hash": ""}')
    assert not [m for m in run_checks() if m.id == "gateway.W002"]
