from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from django.conf import settings
from rest_framework.test import APIClient

from core.redis import redis_client
from queries import services
from queries.models import ApiKey, Job
from tests.mockapi import MockAnthropic

REPO = Path(__file__).resolve().parent.parent
FAKE_CLAUDE = REPO / "tests" / "fake_claude" / "claude"


def real_claude_bin() -> str:
    return os.environ.get("CLAUDE_BIN_REAL") or str(REPO / "node_tools" / "node_modules" / ".bin" / "claude")


@pytest.fixture(autouse=True)
def _clean_redis() -> Iterator[None]:
    """Every test starts with an empty Redis database of its own (tests.settings picks db 15)."""
    redis_client().flushdb()
    yield


@pytest.fixture
def api_key(db: None) -> tuple[ApiKey, str]:
    return services.api_key_create(name="test")


@pytest.fixture
def client(api_key: tuple[ApiKey, str]) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key[1]}")
    return client


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


def cli_environment(mock: MockAnthropic, home: Path) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": mock.url, "ANTHROPIC_API_KEY": "sk-test-mock", "HOME": str(home)}


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


def run_queued_jobs() -> int:
    """Run every queued rq job in this process (rq's SimpleWorker, burst mode); returns how many ran."""
    import django_rq
    from rq import SimpleWorker

    queues = [django_rq.get_queue(name) for name in settings.RQ_QUEUE_NAMES]
    worker = SimpleWorker(queues, connection=queues[0].connection)
    before = Job.objects.filter(state__in=Job.FINISHED_STATES).count()
    worker.work(burst=True)
    return Job.objects.filter(state__in=Job.FINISHED_STATES).count() - before


def process_environment(mock: MockAnthropic, home: Path, workdir: Path, **extra: str) -> dict[str, str]:
    """The environment of a gateway process (web or worker) started by a test: the test database."""
    db = settings.DATABASES["default"]
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CLAUDE_BIN": real_claude_bin(),
        "CLAUDE_WORKDIR": str(workdir),
        "PYTHONUNBUFFERED": "1",
        # Gateway processes record journaled cache hits themselves, as in production.
        "GATEWAY_TEST_JOURNAL_RECORDER": "true",
        # The MCP servers the routes start are found on PATH, as scripts/serve arranges.
        "PATH": os.pathsep.join(
            [
                str(REPO / "node_tools" / "node_modules" / ".bin"),
                str(Path(sys.executable).parent),
                os.environ.get("PATH", ""),
            ]
        ),
        **cli_environment(mock, home),
        **extra,
    }


class Processes:
    """Processes a test started, each in its own session, all stopped (group and all) at teardown."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen] = []

    def start(self, command: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}-{len(self.started)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


@pytest.fixture
def worker_process(transactional_db: None, mock: MockAnthropic, tmp_path: Path, processes: Processes):
    """Start real `manage.py rqworker` processes against the test database; returns a starter."""

    def start(
        *, claude_bin: str | None = None, env: dict[str, str] | None = None, pool: int = 0
    ) -> subprocess.Popen:
        n = len(processes.started)
        extra = {**({"CLAUDE_BIN": claude_bin} if claude_bin else {}), **(env or {})}
        full_env = process_environment(mock, tmp_path / f"home{n}", tmp_path / "workdir", **extra)
        command = [sys.executable, "manage.py"]
        if pool:
            command += ["rqworker-pool", "--num-workers", str(pool)]
        else:
            command += ["rqworker", "--worker-ttl", "30"]
        return processes.start(command + list(settings.RQ_QUEUE_NAMES), full_env, "worker")

    return start


@pytest.fixture
def web_server(transactional_db: None, mock: MockAnthropic, tmp_path: Path, processes: Processes) -> str:
    """The gateway served by gunicorn, as in production, against the test database; returns its URL."""
    return start_web_server(processes, mock, tmp_path)


def start_web_server(processes: Processes, mock: MockAnthropic, tmp_path: Path, **extra: str) -> str:
    """Start gunicorn (2 workers) with ``extra`` environment; returns its URL once it serves."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = process_environment(
        mock,
        tmp_path / "webhome",
        tmp_path / "workdir",
        HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY="2",
        # Each server's own metrics files: gunicorn empties the directory when it starts.
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / f"prometheus-{port}"),
        **extra,
    )
    command = [
        str(Path(sys.executable).with_name("gunicorn")),
        "gateway_project.wsgi",
        "--config",
        "gateway_project/gunicorn.conf.py",
    ]
    proc = processes.start(command, env, "web")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {proc.returncode}")
        try:
            return requests.get(f"{url}/health", timeout=1).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # a busy machine may be slow to boot it
            return False

    wait_for(up, timeout=30, message="gunicorn to serve")
    return url


def wait_for(predicate, *, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Poll until predicate() is truthy; returns its value or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def seeded(db: None) -> None:
    """The default routes, as the data migration makes them (transactional tests empty the tables)."""
    import importlib

    from django.apps import apps

    from routing.services import routing_invalidate

    importlib.import_module("routing.migrations.0002_seed_default_routes").seed(apps, None)
    routing_invalidate()
