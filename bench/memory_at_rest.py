"""Memory of a running gateway at rest, by kind of process: ``bench/memory_at_rest.py PID``.

PID is the process that started everything (``scripts/serve``'s honcho, or any ancestor); every
descendant is read from /proc and counted under the web (gunicorn), the queue workers (rqworker),
the Claude CLIs (warm ones at rest, with the MCP servers they started) or other. PSS shares pages
between the processes that use them, so the PSS total is what the machine spends; RSS counts
shared pages once per process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import cmdline, descendants, memory_kib  # noqa: E402

KINDS = ("web (gunicorn)", "queue workers (rqworker)", "Claude CLIs", "other")


def kind(pid: int, ancestors: dict[int, str]) -> str:
    line = cmdline(pid)
    if "gunicorn" in line:
        return KINDS[0]
    if "rqworker" in line:
        return KINDS[1]
    if "claude" in line and " --print " in f"{line} ":
        return KINDS[2]
    return ancestors.get(pid, KINDS[3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pid", type=int)
    args = parser.parse_args()
    totals = {name: [0, 0, 0] for name in KINDS}  # processes, RSS KiB, PSS KiB
    inherited: dict[int, str] = {}
    for pid in descendants(args.pid):
        name = kind(pid, inherited)
        if name == KINDS[2]:
            # What a CLI started (MCP servers) counts as the CLI's.
            inherited.update(dict.fromkeys(descendants(pid), KINDS[2]))
        rss, pss = memory_kib(pid)
        totals[name][0] += 1
        totals[name][1] += rss
        totals[name][2] += pss
    width = max(len(name) for name in KINDS)
    for name, (count, rss, pss) in totals.items():
        print(f"{name:<{width}}  {count:>3} processes  RSS {rss / 1024:7.0f} MiB  PSS {pss / 1024:7.0f} MiB")
    count = sum(t[0] for t in totals.values())
    rss = sum(t[1] for t in totals.values()) / 1024
    pss = sum(t[2] for t in totals.values()) / 1024
    print(f"{'total':<{width}}  {count:>3} processes  RSS {rss:7.0f} MiB  PSS {pss:7.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
