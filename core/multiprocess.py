"""prometheus_client multiprocess mode for the web processes, with dead processes' files compacted.

gunicorn runs several worker processes; a scrape reaches one of them. In multiprocess mode every
process writes its django-prometheus metrics to its own files (``counter_<pid>.db``, ...) in
``PROMETHEUS_MULTIPROC_DIR`` and a scrape sums them all, so every worker answers with the same totals.

Left alone, the directory gains files for every process that ever lived, and a scrape reads them all.
So when gunicorn reaps a worker (``child_exit``) its counter, histogram and summary files are added
into one ``<type>_archive.db`` per type and deleted, and its gauge files are dropped (a gauge
describes a live process). The directory then holds one file set per live worker plus the archive,
however many workers have come and gone. Scrapes hold a shared lock on ``.lock`` while reading;
compaction holds it exclusively, so no scrape sees a dead worker's counts twice or not at all.

Nothing here imports Django: gunicorn's master process, which has not loaded the application, runs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
ARCHIVE_ID = "archive"
# Types whose samples add up across processes; a dead process's share stays in the totals.
_ADDITIVE_TYPES = ("counter", "histogram", "summary")


def directory() -> Path | None:
    """The multiprocess directory when this process runs in multiprocess mode, else None."""
    value = os.environ.get(ENV_VAR)
    return Path(value) if value else None


def prepare(path: str | os.PathLike[str]) -> None:
    """Create the directory and drop files a previous server left: its totals started at zero too."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with lock(path, shared=False):
        for file in path.glob("*.db"):
            file.unlink(missing_ok=True)


@contextlib.contextmanager
def lock(path: str | os.PathLike[str], *, shared: bool) -> Iterator[None]:
    with open(Path(path) / ".lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


_waiting: list[tuple[int, Path]] = []
_folding = False


def process_exited(pid: int, path: str | os.PathLike[str]) -> None:
    """Fold a dead process's files into the archive; call it once the process has been reaped.

    gunicorn calls this (``child_exit``) from its SIGCHLD handler, which can interrupt a call already
    folding another worker's files while it holds the lock: the interrupting call would then wait for
    the lock forever and the server could never stop. So a call made during another only queues its
    pid, and the call it interrupted folds it before returning.
    """
    global _folding
    _waiting.append((pid, Path(path)))
    while _waiting and not _folding:
        _folding = True
        try:
            while _waiting:
                _fold(*_waiting.pop(0))
        finally:
            _folding = False


def _fold(pid: int, path: Path) -> None:
    from prometheus_client.mmap_dict import MmapedDict

    with lock(path, shared=False):
        for file in path.glob(f"gauge_*_{pid}.db"):
            file.unlink(missing_ok=True)
        for typ in _ADDITIVE_TYPES:
            dead = path / f"{typ}_{pid}.db"
            if not dead.exists():
                continue
            archive = path / f"{typ}_{ARCHIVE_ID}.db"
            totals: dict[str, float] = defaultdict(float)
            for source in (archive, dead):
                if source.exists():
                    for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(source)):
                        totals[key] += value
            staging = path / f"{typ}_{ARCHIVE_ID}.db.new"
            staging.unlink(missing_ok=True)
            merged = MmapedDict(str(staging))
            try:
                for key, value in totals.items():
                    merged.write_value(key, value, 0.0)
            finally:
                merged.close()
            os.replace(staging, archive)
            dead.unlink()
