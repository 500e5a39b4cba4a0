"""Process helpers for the benchmark: free ports, waiting, and CPU and memory read from /proc."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    """A progress line, with the time and the load average."""
    print(f"[{time.strftime('%H:%M:%S')} load {loadavg()}] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Proc:
    """One /proc/PID/stat reading: CPU in seconds (own, and of reaped children), parent, state."""

    pid: int
    ppid: int
    state: str
    cpu: float
    children_cpu: float

    @classmethod
    def read(cls, pid: int) -> Proc | None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2 :].split()
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        return cls(pid, int(fields[1]), fields[0], (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        for child in children(stack.pop()):
            found.append(child)
            stack.append(child)
    return found


def tree_cpu(pid: int) -> float | None:
    """CPU seconds of a process and everything under it (None if it is gone)."""
    readings = [Proc.read(p) for p in [pid, *descendants(pid)]]
    if readings[0] is None:
        return None
    return sum(r.cpu for r in readings if r is not None)


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB; PSS shares out pages that forked processes have in common."""
    rss = pss = 0
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def cli_seconds(times_file: Path, offset: int) -> tuple[float, int, int]:
    """(CPU seconds, runs) of the CLI runs bench/claude_timed recorded after byte ``offset``, and
    the file's end."""
    try:
        data = times_file.read_bytes()
    except FileNotFoundError:
        return 0.0, 0, 0
    total, runs = 0.0, 0
    for line in data[offset:].decode().splitlines():
        if line.startswith("cli "):
            user, system = line.split()[1:3]
            # GNU time truncates each figure to 10 ms: add back the 5 ms it drops on average.
            total += float(user) + float(system) + 0.01
            runs += 1
    return total, runs, len(data)
