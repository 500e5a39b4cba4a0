"""Query requests: every submission, whatever its outcome."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from console.admin.common import (
    ReadOnlyAdmin,
    deliveries_html,
    job_link_html,
    pre,
    purge_cached,
    redeliver,
    search_term_kind,
)
from queries.models import Job, QueryRequest
from webhooks.models import WebhookDelivery


class RequestJobTroubleFilter(admin.SimpleListFilter):
    title = "job"
    parameter_name = "job_state"

    def lookups(self, request, model_admin):
        return [*Job.State.choices, ("failed_hour", "Failed in the last hour")]

    def queryset(self, request, queryset):
        if self.value() == "failed_hour":
            return queryset.filter(
                job__state=Job.State.FAILED, job__finished_at__gte=timezone.now() - timedelta(hours=1)
            )
        if self.value() in Job.State.values:
            return queryset.filter(job__state=self.value())
        return queryset


@admin.register(QueryRequest)
class QueryRequestAdmin(ReadOnlyAdmin):
    list_display = ("id", "outcome", "api", "job_link", "api_key", "priority", "short_query", "created_at")
    list_filter = (
        ("created_at", admin.DateFieldListFilter),
        "outcome",
        "api",
        RequestJobTroubleFilter,
        "priority",
        "api_key",
    )
    list_select_related = ("job", "api_key")
    raw_id_fields = ("job", "api_key")
    actions = ["purge_cache", "redeliver_webhooks"]
    fieldsets = (
        (None, {"fields": ("id", "outcome", "api", "job_link", "api_key", "created_at")}),
        ("Submission", {"fields": ("query", "priority", "model", "no_cache", "hash", "metadata_pretty")}),
        ("Outcome", {"fields": ("job_state", "answer", "job_error", "cost")}),
        ("Webhook", {"fields": ("webhook_url", "webhook")}),
    )

    @admin.display(description="job")
    def job_link(self, request: QueryRequest) -> str:
        return job_link_html(request.job_id, f"{request.job_id} ({request.job.state})")

    @admin.display(description="query")
    def short_query(self, request: QueryRequest) -> str:
        return request.query[:80]

    @admin.display(description="metadata")
    def metadata_pretty(self, request: QueryRequest) -> str:
        return pre(request.metadata)

    @admin.display(description="job state")
    def job_state(self, request: QueryRequest) -> str:
        return request.job.get_state_display()

    @admin.display(description="answer")
    def answer(self, request: QueryRequest) -> str:
        return pre(request.job.response) if request.job.state == Job.State.COMPLETED else "—"

    @admin.display(description="error")
    def job_error(self, request: QueryRequest) -> str:
        job = request.job
        return f"{job.error_type}: {job.error_message}" if job.error_type else "—"

    @admin.display(description="cost (the job's, USD)")
    def cost(self, request: QueryRequest) -> str:
        return str(request.job.cost_usd) if request.job.cost_usd is not None else "—"

    @admin.display(description="delivery")
    def webhook(self, request: QueryRequest) -> str:
        return deliveries_html(WebhookDelivery.objects.filter(request=request))

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        kind, value = search_term_kind(search_term)
        if kind == "uuid":
            return queryset.filter(Q(id=value) | Q(job_id=value)), False
        if kind == "hash":
            return queryset.filter(hash=value), False
        return queryset.filter(query__icontains=value), False

    @admin.action(description="Purge the cached answers of selected requests", permissions=["operate"])
    def purge_cache(self, request: HttpRequest, queryset: QuerySet[QueryRequest]) -> None:
        purge_cached(self, request, list(queryset.select_related("job")), "request(s)")

    @admin.action(description="Redeliver the webhooks of selected requests", permissions=["operate"])
    def redeliver_webhooks(self, request: HttpRequest, queryset: QuerySet[QueryRequest]) -> None:
        deliveries = WebhookDelivery.objects.filter(request__in=queryset).select_related("request")
        redeliver(self, request, deliveries, log_on=lambda d: d.request)
