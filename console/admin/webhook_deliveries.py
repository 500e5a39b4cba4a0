from __future__ import annotations

from datetime import timedelta

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator

from console.admin.common import short_id
from webhooks import services
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSecret


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = (
        "number",
        "started_at",
        "status_code",
        "duration_ms",
        "address",
        "error",
        "short_response",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("number",)

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="response")
    def short_response(self, attempt: WebhookAttempt) -> str:
        return attempt.response_excerpt[:200]


class FailingRecentlyFilter(admin.SimpleListFilter):
    title = "trouble"
    parameter_name = "trouble"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [
            ("retrying", "Retrying (pending after a failed try)"),
            ("failed_day", "Failed or disabled in the last 24 hours"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "retrying":
            return queryset.filter(state=WebhookDelivery.State.PENDING, attempts__gt=0)
        if self.value() == "failed_day":
            return queryset.filter(
                state__in=[WebhookDelivery.State.FAILED, WebhookDelivery.State.DISABLED],
                finished_at__gte=timezone.now() - timedelta(hours=24),
            )
        return queryset


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    # What an operator scans, narrow enough for a 1366-pixel screen; the rest is on the delivery's page.
    list_display = (
        "delivery_id",
        "state",
        "event",
        "short_url",
        "attempts",
        "last_result",
        "next_attempt_at",
        "created_at",
    )
    list_display_links = ("delivery_id",)
    list_filter = ("state", FailingRecentlyFilter, "event")
    raw_id_fields = ("request",)
    search_fields = ("=id", "=request__id", "=request__job__id", "url")
    date_hierarchy = "created_at"
    show_full_result_count = False
    readonly_fields = (
        "id",
        "request_link",
        "url",
        "event",
        "state",
        "attempts",
        "max_attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "webhook_id",
        "body",
        "created_at",
        "finished_at",
    )
    fields = readonly_fields
    inlines = [WebhookAttemptInline]
    actions = ["redeliver_now"]

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Deliveries and their tries are the record of what was sent: never deleted in the admin.
        return False

    @admin.display(description="delivery")
    def delivery_id(self, delivery: WebhookDelivery) -> str:
        return short_id(delivery.id)

    @admin.display(description="URL")
    def short_url(self, delivery: WebhookDelivery) -> str:
        return format_html('<span title="{}">{}</span>', delivery.url, Truncator(delivery.url).chars(60))

    @admin.display(description="last try", ordering="last_status_code")
    def last_result(self, delivery: WebhookDelivery) -> str:
        if delivery.last_status_code is not None:
            return f"HTTP {delivery.last_status_code}"
        return Truncator(delivery.last_error).chars(40) if delivery.last_error else "—"

    @admin.display(description="request")
    def request_link(self, delivery: WebhookDelivery) -> str:
        url = reverse("admin:queries_queryrequest_change", args=[delivery.request_id])
        return format_html('<a href="{}">{}</a>', url, delivery.request_id)

    @admin.display(description="webhook-id")
    def webhook_id(self, delivery: WebhookDelivery) -> str:
        return delivery.webhook_id

    def has_redeliver_permission(self, request: HttpRequest) -> bool:
        # Deliveries are records, never edited in a form; sending one again needs the change permission.
        return request.user.has_perm("webhooks.change_webhookdelivery")

    @admin.action(description="Redeliver now", permissions=["redeliver"])
    def redeliver_now(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = 0
        for delivery in queryset:
            services.webhook_delivery_redeliver(delivery=delivery)
            count += 1
        self.message_user(
            request,
            f"Queued {count} deliver{'y' if count == 1 else 'ies'} to be sent again now.",
            messages.SUCCESS,
        )


@admin.register(WebhookAttempt)
class WebhookAttemptAdmin(admin.ModelAdmin):
    list_display = ("attempt", "delivery_link", "started_at", "status_code", "duration_ms", "short_error")
    list_display_links = ("attempt",)
    list_filter = ("status_code",)
    list_select_related = ("delivery",)
    raw_id_fields = ("delivery",)
    search_fields = ("=delivery__id", "=delivery__request__id", "url")
    date_hierarchy = "started_at"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Deliveries and their tries are the record of what was sent: never deleted in the admin.
        return False

    @admin.display(description="try", ordering="number")
    def attempt(self, attempt: WebhookAttempt) -> str:
        return f"#{attempt.number}"

    @admin.display(description="delivery")
    def delivery_link(self, attempt: WebhookAttempt) -> str:
        url = reverse("admin:webhooks_webhookdelivery_change", args=[attempt.delivery_id])
        return format_html(
            '<a href="{}" title="{}">{}</a> → {}',
            url,
            attempt.delivery_id,
            str(attempt.delivery_id)[:8],
            Truncator(attempt.url).chars(40),
        )

    @admin.display(description="error")
    def short_error(self, attempt: WebhookAttempt) -> str:
        return Truncator(attempt.error).chars(60) if attempt.error else "—"


@admin.register(WebhookSecret)
class WebhookSecretAdmin(admin.ModelAdmin):
    """Adding a secret generates it and shows it once; "rotate" adds a new one while the old keeps signing."""

    list_display = ("prefix", "api_key", "active", "created_at", "expires_at")
    list_filter = ("api_key",)
    list_select_related = ("api_key",)
    raw_id_fields = ("api_key",)
    search_fields = ("prefix", "api_key__name", "api_key__prefix")
    actions = ["rotate"]

    def get_fields(self, request: HttpRequest, obj: WebhookSecret | None = None) -> tuple[str, ...]:
        return ("api_key",) if obj is None else ("api_key", "prefix", "created_at", "expires_at")

    def get_readonly_fields(self, request: HttpRequest, obj: WebhookSecret | None = None) -> tuple[str, ...]:
        # Only the end of a rotated-out secret's grace period may be changed (to end it early).
        return () if obj is None else ("api_key", "prefix", "created_at")

    @admin.display(boolean=True)
    def active(self, secret: WebhookSecret) -> bool:
        return secret.is_active

    def save_model(self, request: HttpRequest, obj: WebhookSecret, form: object, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        row, secret = services.webhook_secret_create(api_key=obj.api_key)
        obj.pk, obj.secret, obj.prefix, obj.created_at = row.pk, row.secret, row.prefix, row.created_at
        obj._state.adding = False
        self._show_once(request, row, secret)

    @admin.action(description="Rotate: new secret; the old one signs for 24 more hours")
    def rotate(self, request: HttpRequest, queryset: QuerySet[WebhookSecret]) -> None:
        for api_key in {secret.api_key for secret in queryset.select_related("api_key")}:
            row, secret = services.webhook_secret_create(api_key=api_key)
            self._show_once(request, row, secret)

    def _show_once(self, request: HttpRequest, row: WebhookSecret, secret: str) -> None:
        self.message_user(
            request,
            f"New webhook signing secret for {row.api_key}: {secret} (copy it now: it is not shown again).",
            messages.WARNING,
        )
