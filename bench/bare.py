"""The reference: the bare Claude CLI, run cold one after another and through ``xargs -P``, before
the gateway starts."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from figures import percentile
from procs import cli_seconds, say
from stack import CLAUDE, Setup, cli_env


def sequential(setup: Setup, run_id: str) -> dict[str, Any]:
    n = setup.args.bare_n
    say(f"bare CLI: {n} sequential runs")
    return {"bare_sequential": bare_sequential(setup, n, run_id)}


def parallel(setup: Setup, run_id: str) -> dict[str, Any]:
    n, parallel = setup.args.burst_n, setup.args.concurrency
    say(f"bare CLI: {n} runs through xargs -P{parallel}")
    return {"bare_parallel": bare_parallel(setup, n, parallel, run_id)}


def cli_argv(prompt: str) -> list[str]:
    return [str(CLAUDE), "--print", "--output-format", "json", "--strict-mcp-config", "--", prompt]


def bare_sequential(setup: Setup, n: int, run_id: str) -> dict[str, Any]:
    """n cold runs one after another: wall time each, and CPU and peak memory from wait4."""
    workdir = Path(setup.env["CLAUDE_WORKDIR"])
    times, cpus, rss = [], [], []
    for i in range(n):
        started = time.monotonic()
        proc = subprocess.Popen(
            cli_argv(f"bare {run_id} {i}: what is {i}+{i}?"),
            cwd=workdir,
            env=cli_env(setup),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        times.append(time.monotonic() - started)
        result = json.loads(out)
        if proc.returncode != 0 or result.get("is_error"):
            raise RuntimeError(f"the bare CLI failed: {out[:300]!r}")
        cpus.append(usage.ru_utime + usage.ru_stime)
        rss.append(usage.ru_maxrss)
    return {
        "n": n,
        "p50": percentile(times, 50),
        "p95": percentile(times, 95),
        "mean": statistics.fmean(times),
        "cpu_per_run": statistics.fmean(cpus),
        "max_rss_mib": max(rss) / 1024,
    }


def bare_parallel(setup: Setup, n: int, parallel: int, run_id: str) -> dict[str, Any]:
    """n cold runs through ``xargs -P parallel``: runs per second, and CPU per run under the same
    crowding as the gateway's burst (bench/claude_timed, whose own cost is a few milliseconds)."""
    workdir = Path(setup.env["CLAUDE_WORKDIR"])
    prompts = "".join(f"bare burst {run_id} {i}: name {i} primes\0" for i in range(n)).encode()
    # Each CLI in a session of its own, as the gateway's runner starts them: with the kernel's
    # autogroup scheduling a session is what shares the CPU with other work on the machine, so the
    # bare runs and the gateway's get the same share of a loaded machine.
    argv = ["xargs", "-0", "-n", "1", "-P", str(parallel), "setsid", setup.env["CLAUDE_BIN"]]
    argv += cli_argv("")[1:-1]
    times = setup.tmp / "bare-times.txt"
    times.unlink(missing_ok=True)  # a run of its own each time (bench/burst.py repeats it)
    env = {**cli_env(setup), "BENCH_CLI_TIMES": str(times)}
    started = time.monotonic()
    done = subprocess.run(argv, input=prompts, cwd=workdir, env=env, capture_output=True)
    elapsed = time.monotonic() - started
    cpu, runs, _ = cli_seconds(times, 0)
    answers = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    if done.returncode != 0 or len(answers) != n or any(a.get("is_error") for a in answers):
        raise RuntimeError(f"xargs -P: {done.returncode}, {len(answers)} answers, {done.stderr[-300:]!r}")
    return {
        "n": n,
        "parallel": parallel,
        "seconds": elapsed,
        "per_second": n / elapsed,
        "cpu_per_run": cpu / runs,
    }
