"""Liveness and readiness."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET
from rq import Worker

from core.redis import redis_client

_CLI_VERSION_TTL = 300.0
_cli_version: dict[str, Any] = {"checked": 0.0, "value": None, "path": None}
_cli_lock = threading.Lock()


# csrf_exempt: these read nothing from cookies, so a stray POST is a 405 rather than a CSRF 403.
@csrf_exempt
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Liveness: the process serves. Touches nothing else."""
    return JsonResponse({"status": "ok"})


def _timed(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = {"status": "ok", **check()}
    except Exception as exc:  # a readiness probe reports every failure, whatever its kind
        result = {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}
    result["latencyMs"] = round((time.perf_counter() - started) * 1000, 2)
    return result


def _check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


def _check_redis() -> dict[str, Any]:
    redis_client().ping()
    return {}


def _check_workers() -> dict[str, Any]:
    # rq drops a worker from this set when its heartbeat key expires; the queries app registers a
    # check that also looks at heartbeat ages (readiness_check_register).
    workers = Worker.all(connection=redis_client())
    if not workers:
        raise RuntimeError("no live queue worker")
    busy = sum(1 for w in workers if w.get_state() == "busy")
    return {"workers": len(workers), "busy": busy}


def cli_version() -> tuple[str | None, str | None]:
    """(path, version) of CLAUDE_BIN (settings resolved it: core.cli_tools); the version is asked at
    most every few minutes."""
    path = shutil.which(settings.CLAUDE_BIN)
    if path is None:
        return None, None
    with _cli_lock:
        fresh = time.monotonic() - _cli_version["checked"] < _CLI_VERSION_TTL
        if fresh and _cli_version["path"] == path:
            return path, _cli_version["value"]
        try:
            out = subprocess.run(
                [path, "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15
            )
            version = (
                out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
            )
        except (OSError, subprocess.TimeoutExpired):
            version = None
        _cli_version.update(checked=time.monotonic(), value=version, path=path)
        return path, version


def _check_cli() -> dict[str, Any]:
    path, version = cli_version()
    if path is None:
        raise RuntimeError(f"{settings.CLAUDE_BIN!r} not found on PATH or in node_tools/")
    if version is None:
        raise RuntimeError(f"{path} did not report a version")
    return {"path": path, "version": version}


READINESS_CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "database": _check_database,
    "redis": _check_redis,
    "workers": _check_workers,
    "claude": _check_cli,
}


def readiness_check_register(name: str, check: Callable[[], dict[str, Any]]) -> None:
    """Let an app give /ready a check only it can make (it raises to report the component down)."""
    READINESS_CHECKS[name] = check


@csrf_exempt
@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    """Readiness: every component the gateway needs, with status and latency; 503 if any is down."""
    components = {name: _timed(check) for name, check in READINESS_CHECKS.items()}
    failing = [name for name, c in components.items() if c["status"] != "ok"]
    return JsonResponse(
        {"status": "unavailable" if failing else "ok", "failing": failing, "components": components},
        status=503 if failing else 200,
    )
