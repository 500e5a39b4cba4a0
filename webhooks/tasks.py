"""rq job functions: take ids, call one service."""

from __future__ import annotations

from webhooks import services


def deliver_webhook(delivery_id: str) -> str | None:
    attempt = services.webhook_delivery_attempt(delivery_id=delivery_id)
    if attempt is None:
        return None
    return str(attempt.status_code or attempt.error)
