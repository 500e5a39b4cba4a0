"""API keys: created and shown once, limits, spend and usage, revocation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Count, DecimalField, IntegerField, OuterRef, Q, Subquery, Sum
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from queries import services
from queries.models import ApiKey, Priority, QueryRequest
from queries.quotas import api_key_month_spend, month_start


class ApiKeyForm(forms.ModelForm):
    allowed_priorities = forms.MultipleChoiceField(
        choices=Priority.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every priority.",
    )
    allowed_models = forms.CharField(
        required=False,
        help_text="Comma-separated model names or aliases (e.g. haiku, sonnet). Empty: any model; "
        "when set, queries must name one of them.",
    )

    class Meta:
        model = ApiKey
        fields = (
            "name",
            "is_active",
            "expires_at",
            "allowed_priorities",
            "allowed_models",
            "rate_limit_per_minute",
            "max_concurrent_jobs",
            "monthly_budget_usd",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["allowed_models"] = ", ".join(self.instance.allowed_models or [])

    def clean_allowed_models(self) -> list[str]:
        return [name.strip() for name in self.cleaned_data["allowed_models"].split(",") if name.strip()]


class ExpiredFilter(admin.SimpleListFilter):
    title = "expiry"
    parameter_name = "expired"

    def lookups(self, request, model_admin):
        return [("yes", "Expired"), ("no", "Not expired")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "yes":
            return queryset.filter(expires_at__lte=now)
        if self.value() == "no":
            return queryset.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    # What an operator scans, narrow enough for a 1366-pixel screen; the limits are on the key's page.
    list_display = (
        "name",
        "prefix",
        "is_active",
        "spend_this_month",
        "requests_30d",
        "last_used_at",
        "expires_at",
    )
    list_filter = ("is_active", ExpiredFilter)
    search_fields = ("name", "prefix")
    readonly_fields = ("prefix", "created_at", "last_used_at", "spend_this_month", "requests_30d", "usage")
    fieldsets = (
        (None, {"fields": ("name", "prefix", "is_active", "expires_at", "created_at", "last_used_at")}),
        (
            "Limits (blank: unlimited)",
            {
                "fields": (
                    "allowed_priorities",
                    "allowed_models",
                    "rate_limit_per_minute",
                    "max_concurrent_jobs",
                    "monthly_budget_usd",
                    "spend_this_month",
                )
            },
        ),
        ("Usage", {"fields": ("requests_30d", "usage")}),
    )
    actions = ["revoke"]

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            # Adding: the name and limits; the key itself is shown once, on the page after saving.
            limits = tuple(name for name in API_KEY_LIMIT_FIELDS if name != "expires_at")
            return (
                (None, {"fields": ("name", "expires_at")}),
                ("Limits (blank: unlimited)", {"fields": limits}),
            )
        return self.fieldsets

    def save_model(self, request, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        limits = {name: form.cleaned_data.get(name) for name in API_KEY_LIMIT_FIELDS}
        limits["allowed_priorities"] = limits["allowed_priorities"] or []
        limits["allowed_models"] = limits["allowed_models"] or []
        row, key = services.api_key_create(name=form.cleaned_data["name"], limits=limits)
        obj.pk, obj.prefix, obj.key_hash, obj.created_at = row.pk, row.prefix, row.key_hash, row.created_at
        obj._state.adding = False
        obj._plaintext_key = key  # type: ignore[attr-defined]

    def response_add(self, request, obj: ApiKey, post_url_continue=None) -> HttpResponse:
        key = getattr(obj, "_plaintext_key", None)
        if key is None:
            return super().response_add(request, obj, post_url_continue)
        # Rendered, never redirected to: the plaintext lives in this one response and nowhere else
        # (not in the session, not in a message cookie).
        response = TemplateResponse(
            request,
            "admin/queries/apikey/created.html",
            {
                **self.admin_site.each_context(request),
                "title": "API key created",
                "opts": self.opts,
                "api_key": obj,
                "plaintext_key": key,
                "change_url": reverse("admin:queries_apikey_change", args=[obj.pk]),
            },
        )
        response["Cache-Control"] = "no-store"
        return response

    def get_queryset(self, request):
        spend = (
            QueryRequest.objects.filter(
                api_key=OuterRef("pk"), outcome=QueryRequest.Outcome.QUEUED, created_at__gte=month_start()
            )
            .values("api_key")
            .annotate(total=Sum("job__cost_usd"))
            .values("total")
        )
        recent = (
            QueryRequest.objects.filter(
                api_key=OuterRef("pk"), created_at__gte=timezone.now() - timedelta(days=30)
            )
            .order_by()
            .values("api_key")
            .annotate(n=Count("id"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                month_spend=Subquery(spend[:1], output_field=DecimalField(max_digits=14, decimal_places=6)),
                recent_requests=Subquery(recent[:1], output_field=IntegerField()),
            )
        )

    @admin.display(description="requests (30 days)", ordering="recent_requests")
    def requests_30d(self, api_key: ApiKey) -> int:
        count = getattr(api_key, "recent_requests", None)
        return count or 0

    @admin.display(description="submissions by outcome (30 days)")
    def usage(self, api_key: ApiKey) -> str:
        if not api_key.pk:
            return "—"
        rows = (
            QueryRequest.objects.filter(api_key=api_key, created_at__gte=timezone.now() - timedelta(days=30))
            .order_by()
            .values("outcome")
            .annotate(n=Count("id"))
        )
        counts = {row["outcome"]: row["n"] for row in rows}
        return ", ".join(f"{label}: {counts.get(value, 0)}" for value, label in QueryRequest.Outcome.choices)

    @admin.display(description="spend this month (UTC)", ordering="month_spend")
    def spend_this_month(self, api_key: ApiKey) -> str:
        spent = getattr(api_key, "month_spend", None)
        if spent is None and api_key.pk:
            spent = api_key_month_spend(api_key=api_key)
        text = f"${spent or 0:.4f}"
        if api_key.monthly_budget_usd is not None:
            text += f" of ${api_key.monthly_budget_usd:.2f}"
        return text

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request, queryset) -> None:
        count = 0
        for api_key in queryset:
            if services.api_key_revoke(api_key=api_key):
                self.log_change(request, api_key, "Revoked.")
                count += 1
        self.message_user(request, f"Revoked {count} key(s); requests with them now get 401.")


API_KEY_LIMIT_FIELDS = (
    "expires_at",
    "allowed_priorities",
    "allowed_models",
    "rate_limit_per_minute",
    "max_concurrent_jobs",
    "monthly_budget_usd",
)
