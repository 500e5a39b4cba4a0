"""Processes the tests start: gunicorn and rq workers against the test database, the real and fake CLIs.

Each process gets its own session, so that stopping it stops its whole group (CLIs, MCP servers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.conf import settings

from tests.mockapi import MockAnthropic
from tests.support import REPO
from tests.support.waiting import wait_for

NODE_BIN = REPO / "node_tools" / "node_modules" / ".bin"
FAKE_CLAUDE = REPO / "tests" / "fake_claude" / "claude"


def real_claude_bin() -> str:
    return os.environ.get("CLAUDE_BIN_REAL") or str(NODE_BIN / "claude")


def cli_environment(mock: MockAnthropic, home: Path) -> dict[str, str]:
    """What the real CLI needs to answer through the mock Anthropic API, and nothing of the user's."""
    return {"ANTHROPIC_BASE_URL": mock.url, "ANTHROPIC_API_KEY": "sk-test-mock", "HOME": str(home)}


def database_url(suffix: str = "") -> str:
    """The URL of the database this test uses (pytest-django's test copy), for a process to reach it."""
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}{suffix}"


def process_environment(mock: MockAnthropic, home: Path, workdir: Path, **extra: str) -> dict[str, str]:
    """The environment of a gateway process (web or worker) started by a test: the test database."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "CLAUDE_BIN": real_claude_bin(),
        "CLAUDE_WORKDIR": str(workdir),
        "PYTHONUNBUFFERED": "1",
        # Gateway processes record journaled cache hits themselves, as in production.
        "GATEWAY_TEST_JOURNAL_RECORDER": "true",
        # The MCP servers the routes start are found on PATH, as scripts/serve arranges.
        "PATH": os.pathsep.join(
            [str(NODE_BIN), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
        ),
        **cli_environment(mock, home),
        **extra,
    }


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (at the moment of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def start_web_server(processes: Processes, mock: MockAnthropic, tmp_path: Path, **extra: str) -> str:
    """Start gunicorn (2 uvicorn workers, gateway_project.asgi) with ``extra`` environment; returns
    its URL once it serves."""
    port = free_port()
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
        "gateway_project.asgi:application",
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


def start_worker(
    processes: Processes,
    mock: MockAnthropic,
    tmp_path: Path,
    *,
    claude_bin: str | None = None,
    env: dict[str, str] | None = None,
    pool: int = 0,
) -> subprocess.Popen:
    """Start ``manage.py rqworker`` on the gateway's queues (``rqworker-pool`` of ``pool`` workers)."""
    n = len(processes.started)
    extra = {**({"CLAUDE_BIN": claude_bin} if claude_bin else {}), **(env or {})}
    full_env = process_environment(mock, tmp_path / f"home{n}", tmp_path / "workdir", **extra)
    command = [sys.executable, "manage.py"]
    if pool:
        command += ["rqworker-pool", "--num-workers", str(pool)]
    else:
        command += ["rqworker", "--worker-ttl", "30"]
    return processes.start(command + list(settings.RQ_QUEUE_NAMES), full_env, "worker")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members
