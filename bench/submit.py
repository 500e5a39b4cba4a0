"""Submissions that miss the cache with no worker running (only the submit path), with wrk."""

from __future__ import annotations

from typing import Any

from procs import say
from stack import Gateway, Setup, count_rows
from wrk import wrk

WRK_DISTINCT = """
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function request()
  counter = counter + 1
  local body = '{{"query": "submit {run_id} ' .. tid .. ' ' .. counter .. ': what is new?"}}'
  return wrk.format("POST", "/api/query", {{["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer {key}"}}, body)
end
"""


def measure(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    """Stops the workers (the last measurement to run)."""
    say("submissions with the workers stopped")
    setup.stop(gateway.workers)
    gateway.workers = None
    return {"submissions": submissions(setup, gateway, run_id)}


def submissions(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    """wrk posting distinct queries with no worker running: the submit path alone."""
    jobs = "SELECT count(*) FROM queries_job"
    before = count_rows(setup, jobs)
    figures = wrk(setup, gateway.url, WRK_DISTINCT.format(run_id=run_id, key=gateway.key), "submit")
    figures["jobs_created"] = count_rows(setup, jobs) - before
    return figures
