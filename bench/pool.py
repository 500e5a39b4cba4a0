"""The warm pool's hits and misses so far (the gateway's own counters), and the jobs' intents."""

from __future__ import annotations

from typing import Any

import psycopg
import redis
from stack import Gateway, Setup


def measure(setup: Setup, gateway: Gateway, run_id: str) -> dict[str, Any]:
    return {"pool": pool_counts(setup)}


def pool_counts(setup: Setup) -> dict[str, Any]:
    """Warm-pool hits and misses so far, and the jobs' intents: a query routed to an MCP server
    needs a CLI with that server, which no worker has warm at first."""
    counters = redis.Redis.from_url(setup.redis_url).hgetall("metrics:counters")
    with psycopg.connect(setup.database_url, autocommit=True) as conn:
        intents = dict(conn.execute("SELECT intent, count(*) FROM queries_job GROUP BY intent").fetchall())
    return {
        "hits": int(float(counters.get(b"claude_cli_pool_hits_total", 0))),
        "misses": int(float(counters.get(b"claude_cli_pool_misses_total", 0))),
        "intents": intents,
    }
