"""The web's django-prometheus metrics in multiprocess mode: files per process, folded when one exits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from core import multiprocess
from tests.support.metrics import Samples, parse_samples, value

_WRITER = textwrap.dedent(
    """
    import sys
    from prometheus_client import Counter, Gauge, Histogram
    n = int(sys.argv[1])
    Counter("demo_requests", "demo", ["view"]).labels(view="a").inc(n)
    Histogram("demo_latency_seconds", "demo", buckets=(0.1, 1.0)).observe(0.5 * n)
    Gauge("demo_in_flight", "demo", multiprocess_mode="livesum").set(1)
    Gauge("demo_applied", "demo").set(n)
    """
)


def run_writer(directory: Path, n: int) -> int:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    proc = subprocess.run([sys.executable, "-c", _WRITER, str(n)], env=env, check=True)
    assert proc.returncode == 0
    return _last_pid(directory)


def _last_pid(directory: Path) -> int:
    pids = {int(p.stem.rsplit("_", 1)[1]) for p in directory.glob("counter_*.db") if "archive" not in p.stem}
    return max(pids, key=lambda pid: (directory / f"counter_{pid}.db").stat().st_mtime_ns)


def collect(directory: Path) -> Samples:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return parse_samples(generate_latest(registry).decode())


def test_dead_processes_files_are_folded_into_one_archive(tmp_path):
    directory = tmp_path / "prom"
    multiprocess.prepare(directory)
    pids = [run_writer(directory, n) for n in (1, 2, 3, 4)]
    before = collect(directory)
    assert value(before, "demo_requests_total", view="a") == 10
    assert value(before, "demo_latency_seconds_count") == 4

    for pid in pids[:3]:
        multiprocess.process_exited(pid, directory)
    after = collect(directory)
    for name, labels in [
        ("demo_requests_total", {"view": "a"}),
        ("demo_latency_seconds_count", {}),
        ("demo_latency_seconds_sum", {}),
        ("demo_latency_seconds_bucket", {"le": "1.0"}),
        ("demo_latency_seconds_bucket", {"le": "+Inf"}),
    ]:
        assert value(after, name, **labels) == value(before, name, **labels), name
    # Gauges of dead processes are dropped; the live one (pid 4) stays.
    assert value(after, "demo_in_flight") == 1
    assert {labels for (name, labels) in after if name == "demo_applied"} == {(("pid", str(pids[3])),)}
    names = sorted(p.name for p in directory.glob("*.db"))
    assert names == sorted(
        [
            "counter_archive.db",
            "histogram_archive.db",
            f"counter_{pids[3]}.db",
            f"histogram_{pids[3]}.db",
            f"gauge_livesum_{pids[3]}.db",
            f"gauge_all_{pids[3]}.db",
        ]
    )

    multiprocess.process_exited(pids[3], directory)
    assert value(collect(directory), "demo_requests_total", view="a") == 10
    assert sorted(p.name for p in directory.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]

    multiprocess.prepare(directory)  # a new server starts from zero, as its processes do
    assert list(directory.glob("*.db")) == []


def test_a_worker_reaped_while_another_is_folded_waits_for_it_instead_of_deadlocking(tmp_path, monkeypatch):
    """gunicorn's SIGCHLD handler can run child_exit inside a child_exit that holds the lock."""
    directory = tmp_path / "prom"
    multiprocess.prepare(directory)
    pids = [run_writer(directory, n) for n in (1, 2)]
    before = collect(directory)
    real_fold = multiprocess._fold
    nested = []

    def fold_interrupted(pid, path):
        with multiprocess.lock(path, shared=False):
            if not nested:  # the second worker's exit arrives while the first's files are folded
                nested.append(pid)
                multiprocess.process_exited(pids[1], directory)
        real_fold(pid, path)

    monkeypatch.setattr(multiprocess, "_fold", fold_interrupted)
    done = threading.Thread(target=multiprocess.process_exited, args=(pids[0], directory), daemon=True)
    done.start()
    done.join(10)
    assert not done.is_alive(), "process_exited deadlocked on its own lock"
    assert value(collect(directory), "demo_requests_total", view="a") == value(
        before, "demo_requests_total", view="a"
    )
    assert sorted(p.name for p in directory.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]
