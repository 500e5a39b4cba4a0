from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from queries.models import ApiKey, QueryRequest


class WebhookSecret(models.Model):
    """A signing secret for the webhooks of one API key's requests (else WEBHOOK_SECRET signs them).

    Rotation adds a new secret and gives the old one an ``expires_at``: until then deliveries carry a
    signature from each, so receivers can switch keys without losing a message.
    """

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="webhook_secrets")
    secret = models.CharField(max_length=100, editable=False, help_text="whsec_<base64>; shown once.")
    prefix = models.CharField(max_length=16, editable=False, help_text="The secret's first characters.")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Set when rotated out: the secret still signs until then."
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["api_key", "expires_at"], name="webhook_secret_key_idx")]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.api_key})"

    @property
    def is_active(self) -> bool:
        return self.expires_at is None or self.expires_at > timezone.now()


class WebhookDelivery(models.Model):
    """One logical delivery of a request's outcome to its webhook URL, however many tries it takes.

    The row is the truth: ``next_attempt_at`` says when a pending delivery is due, and the sweeper
    re-enqueues what is due whatever happened to Redis.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        DISABLED = "disabled", "Disabled (410 Gone)"

    class Event(models.TextChoices):
        COMPLETED = "query.completed"
        FAILED = "query.failed"

    FINAL_STATES = (State.SUCCEEDED, State.FAILED, State.DISABLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # One logical delivery per request: both outcome hooks may fire for a joined request, and the
    # unique constraint that OneToOneField adds lets only the first create it.
    request = models.OneToOneField(QueryRequest, on_delete=models.CASCADE, related_name="webhook_delivery")
    url = models.CharField(max_length=2048)
    event = models.CharField(max_length=32, choices=Event.choices)
    # The exact bytes sent on every try, so retries carry an identical, verifiable body.
    body = models.TextField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField()
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        ordering = ["-created_at"]
        indexes = [
            # The sweeper's "pending and due" scan touches pending rows only.
            models.Index(
                fields=["next_attempt_at"], condition=Q(state="pending"), name="webhook_delivery_due_idx"
            ),
            models.Index(fields=["state", "created_at"], name="webhook_delivery_state_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.url[:60]} ({self.state})"

    @property
    def webhook_id(self) -> str:
        """The ``webhook-id`` header: the same on every try, the receiver's idempotency key."""
        return f"msg_{self.id.hex}"


class WebhookAttempt(models.Model):
    """One try of a delivery, written before the request goes out and completed after."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_rows")
    number = models.PositiveIntegerField()
    url = models.CharField(max_length=2048)
    webhook_timestamp = models.BigIntegerField(help_text="The webhook-timestamp header sent.")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    address = models.CharField(
        max_length=64, blank=True, default="", help_text="The IP address connected to."
    )
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    response_excerpt = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_number_unique"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}: {self.status_code or self.error or 'in flight'}"

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
