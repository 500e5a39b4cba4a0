"""What the pipeline announces, for the apps above ``queries`` to act on without being imported here.

- ``request_recorded(request=QueryRequest)``: a joined or cache-answered request was written; its
  outcome may already be known.
- ``job_finished(job=Job)``: a job reached its final state; every request pointing to it now has
  its outcome.
- ``worker_maintenance()``: a queue worker's periodic maintenance (every WEBHOOK_SWEEP_INTERVAL).

Listeners are connected in their app's ``AppConfig.ready`` (docs/architecture.md lists them). One
that fails is logged and the others still run: an outcome is recorded whatever a listener does.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger(__name__)

request_recorded = Signal()
job_finished = Signal()
worker_maintenance = Signal()


def send(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal`` to every listener; a listener's exception is logged, never raised."""
    for receiver, result in signal.send_robust(sender=None, **kwargs):
        if isinstance(result, Exception):
            logger.error("listener %s failed", getattr(receiver, "__qualname__", receiver), exc_info=result)
