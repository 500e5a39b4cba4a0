"""Database connections that a restart or failover of PostgreSQL broke: found before use, replaced.

Connections live across requests and jobs (CONN_MAX_AGE) without Django's health checks, which cost
a round trip per request. When PostgreSQL drops them (a restart, a failover, ``pg_terminate_backend``)
the server says so on the socket before closing it: an idle connection whose socket is readable, or
closed, is broken. :func:`connections_drop_broken` closes those, so the next query opens a fresh one;
it runs when a request starts (``request_started``) and before each job. A connection that breaks in
the middle of a request is the caller's: :func:`database_lost` tells such errors apart, and the API
answers them with a JSON 503 after one retry on a fresh connection (core.handlers).
"""

from __future__ import annotations

import logging
import select
from typing import Any

from django.db import InterfaceError, OperationalError, connections

logger = logging.getLogger(__name__)

DATABASE_ERRORS = (OperationalError, InterfaceError)


def _broken(raw: Any) -> bool:
    if getattr(raw, "closed", False) or getattr(raw, "broken", False):
        return True
    try:
        fd = raw.fileno()
    except Exception:  # psycopg raises OperationalError on a closed connection
        return True
    try:
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return True
    # Idle and in autocommit, a connection has nothing to read unless the server ended it.
    return bool(readable)


def connections_drop_broken(**_: Any) -> int:
    """Close every open PostgreSQL connection of this thread that the server ended; how many.

    Connections inside a transaction are left alone: the transaction would be lost, and its owner
    gets the error where it can handle it.
    """
    dropped = 0
    for conn in connections.all(initialized_only=True):
        raw = conn.connection
        if raw is None or conn.vendor != "postgresql" or conn.in_atomic_block:
            continue
        if _broken(raw):
            logger.info("database connection %r was closed by the server; opening a new one", conn.alias)
            conn.close()
            dropped += 1
    return dropped


def database_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is the database being unreachable or a connection it dropped."""
    return isinstance(exc, DATABASE_ERRORS)


def connections_reset() -> None:
    """Close this thread's connections whatever their state (after a database error)."""
    for conn in connections.all(initialized_only=True):
        try:
            conn.close()
        except DATABASE_ERRORS:
            # Closing a dead connection can fail too; Django forgets it either way.
            conn.connection = None
