"""Polling for what another thread or process does, with a deadline that fails the test."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import requests


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"
) -> Any:
    """Poll until predicate() is truthy; returns its value or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def wait_finished(http: requests.Session, job_id: str, timeout: float = 60) -> dict:
    """Poll the API (``http`` is the ``http`` fixture's session) until the job has finished; its body."""

    def finished() -> dict | None:
        body = http.get(f"{http.base}/api/query/{job_id}", timeout=10).json()
        return body if body["state"] in ("completed", "failed", "cancelled") else None

    return wait_for(finished, timeout=timeout, message=f"job {job_id} to finish")
