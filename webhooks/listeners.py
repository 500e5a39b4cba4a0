"""What webhooks do when the pipeline announces an outcome (queries.signals).

Connected in WebhooksConfig.ready.
"""

from __future__ import annotations

from typing import Any

from queries.models import Job, QueryRequest
from webhooks import services


def on_request_recorded(*, request: QueryRequest, **kwargs: Any) -> None:
    services.webhook_on_request(request=request)


def on_job_finished(*, job: Job, **kwargs: Any) -> None:
    services.webhook_on_job_finished(job=job)


def on_worker_maintenance(**kwargs: Any) -> None:
    # Deliveries whose rq jobs were lost (a Redis flush, no rq scheduler) still go out.
    services.webhook_sweep_if_due()
