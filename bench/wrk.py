"""wrk runs against a gunicorn (the gateway's or the bare view's), and reading wrk's figures."""

from __future__ import annotations

import re
import subprocess
from typing import Any

from stack import Setup


def wrk(
    setup: Setup,
    url: str,
    script: str,
    name: str,
    duration: float | None = None,
    endpoint: str = "/api/query",
) -> dict[str, Any]:
    path = setup.tmp / f"{name}.lua"
    path.write_text(script)
    args = setup.args
    command = [
        "wrk",
        f"-t{args.wrk_threads}",
        f"-c{args.wrk_connections}",
        f"-d{duration or args.wrk_duration}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(path),
        f"{url}{endpoint}",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    (setup.tmp / f"{name}.wrk.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr}")
    return parse_wrk(done.stdout)


def wrk_warm_up(setup: Setup, url: str, script: str, name: str, endpoint: str = "/api/query") -> None:
    """A short wrk run first: gunicorn answers /health once one worker is up, and wrk's connections,
    kept alive for the whole run, would all land on the workers that had finished starting."""
    wrk(setup, url, script, f"{name}-warm-up", duration=min(2, setup.args.wrk_duration), endpoint=endpoint)


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    figures: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    for line in output.splitlines():
        line = line.strip()
        if m := re.match(r"(\d+) requests in ([\d.]+)(\w+)", line):
            figures["requests"] = int(m.group(1))
        elif m := re.match(r"Requests/sec:\s+([\d.]+)", line):
            figures["per_second"] = float(m.group(1))
        elif m := re.match(r"(50|75|90|99)%\s+(\S+)", line):
            figures[f"p{m.group(1)}_ms"] = _ms(m.group(2))
        elif m := re.match(r"Non-2xx or 3xx responses: (\d+)", line):
            figures["non_2xx"] = int(m.group(1))
        elif line.startswith("Socket errors:"):
            figures["socket_errors"] = sum(int(n) for n in re.findall(r"\d+", line))
    return figures
