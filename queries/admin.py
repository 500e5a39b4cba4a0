"""The operators' history and actions: jobs, requests and API keys.

Job and request tables grow without bound, so their changelists never count the whole table (see
CappedCountPaginator), filter on indexed columns, and search by the kind of term typed (an id, a
hash, or words) instead of OR-ing every field into one sequential scan.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db.models import Count, DecimalField, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery, Sum
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from redis.exceptions import RedisError

from queries import services
from queries.models import ApiKey, Job, Priority, QueryRequest
from queries.quotas import api_key_month_spend, month_start

# A job whose CLI ran this long (or timed out) shows under the "slow" filter.
SLOW_SECONDS = 30
OPERATE_PERMISSION = "queries.change_job"


class CappedCountPaginator(Paginator):
    """Counts at most CAP rows: COUNT(*) over a big table reads every row, on every page load.

    Past the cap the changelist shows "10000" results and that many pages; narrowing by date or a
    filter reaches the rest.
    """

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        return self.object_list.order_by()[: self.CAP].count()


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records of what happened: operators read them, services write them."""

    paginator = CappedCountPaginator
    show_full_result_count = False
    search_fields = ("query",)  # shows the search box; get_search_results decides what a term means
    search_help_text = "A job or request id, a query hash, or words from the query."

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        # Records are never edited in a form; acting on them (retry, cancel, purge) needs this.
        return request.user.has_perm(OPERATE_PERMISSION)


def _search_term_kind(term: str) -> tuple[str, Any]:
    term = term.strip()
    try:
        return "uuid", uuid.UUID(term)
    except ValueError:
        pass
    try:
        return "hash", services.cache_hash_check(term)
    except ValueError:
        return "text", term


def _pre(value: Any) -> str:
    if value in (None, "", [], {}):
        return "—"
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', text)


def _job_link(job_id: Any, label: str | None = None) -> str:
    if job_id is None:
        return "—"
    url = reverse("admin:queries_job_change", args=[job_id])
    return format_html('<a href="{}">{}</a>', url, label or job_id)


def _deliveries_html(deliveries: Any) -> str:
    rows = [
        (
            reverse("admin:webhooks_webhookdelivery_change", args=[d.id]),
            d.event,
            d.state,
            d.attempts,
            d.last_status_code or d.last_error[:80] or "—",
            d.url[:80],
        )
        for d in deliveries
    ]
    if not rows:
        return "—"
    return format_html(
        "<ul style='margin: 0; padding-left: 1em'>{}</ul>",
        format_html_join("", '<li><a href="{}">{} ({}, {} tries, last: {})</a> → {}</li>', rows),
    )


class TroubleFilter(admin.SimpleListFilter):
    title = "trouble"
    parameter_name = "trouble"

    def lookups(self, request, model_admin):
        return [
            ("failed_hour", "Failed in the last hour"),
            ("slow", f"Slow (CLI over {SLOW_SECONDS} s, or timed out)"),
            ("retried", "Retried"),
        ]

    def queryset(self, request, queryset):
        if self.value() == "failed_hour":
            return queryset.filter(
                state=Job.State.FAILED, finished_at__gte=timezone.now() - timedelta(hours=1)
            )
        if self.value() == "slow":
            return queryset.filter(
                Q(duration_ms__gte=SLOW_SECONDS * 1000) | Q(error_type=Job.ErrorType.CLI_TIMEOUT)
            )
        if self.value() == "retried":
            return queryset.filter(retries__isnull=False).distinct()
        return queryset


class IntentFilter(admin.SimpleListFilter):
    """The rules' intents, read from the (small) rules table: a DISTINCT over jobs would scan them all."""

    title = "intent"
    parameter_name = "intent"

    def lookups(self, request, model_admin):
        from routing.models import IntentRule

        names = set(IntentRule.objects.values_list("name", flat=True)) | {"general"}
        return [(name, name) for name in sorted(names)]

    def queryset(self, request, queryset):
        return queryset.filter(intent=self.value()) if self.value() else queryset


class JobApiKeyFilter(admin.SimpleListFilter):
    title = "API key"
    parameter_name = "api_key"

    def lookups(self, request, model_admin):
        return [(str(k.pk), str(k)) for k in ApiKey.objects.only("pk", "name", "prefix")]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        own = QueryRequest.objects.filter(job_id=OuterRef("pk"), api_key_id=self.value())
        return queryset.filter(Exists(own))


class AnsweredHowFilter(admin.SimpleListFilter):
    title = "answered"
    parameter_name = "answered"

    def lookups(self, request, model_admin):
        return [
            ("cli", "By a CLI run"),
            ("cache", "From the cache (queued before an identical job finished)"),
            ("joined", "Has joined (deduplicated) requests"),
        ]

    def queryset(self, request, queryset):
        if self.value() == "cli":
            return queryset.filter(state=Job.State.COMPLETED, served_from_cache=False)
        if self.value() == "cache":
            return queryset.filter(served_from_cache=True)
        if self.value() == "joined":
            joined = QueryRequest.objects.filter(
                job_id=OuterRef("pk"), outcome=QueryRequest.Outcome.DEDUPLICATED
            )
            return queryset.filter(Exists(joined))
        return queryset


class QueryRequestInline(admin.TabularInline):
    model = QueryRequest
    fields = ("id", "outcome", "api_key", "priority", "webhook_url", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    classes = ("collapse",)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "state",
        "priority",
        "intent",
        "short_query",
        "error_type",
        "cost_usd",
        "cli_seconds",
        "retry_of_link",
        "created_at",
        "finished_at",
    )
    # No date_hierarchy: its links come from a DISTINCT over every row's date. These ranges cost nothing.
    list_filter = (
        ("created_at", admin.DateFieldListFilter),
        "state",
        TroubleFilter,
        "priority",
        IntentFilter,
        JobApiKeyFilter,
        AnsweredHowFilter,
        "error_type",
    )
    inlines = [QueryRequestInline]
    actions = ["retry", "cancel", "purge_cache", "redeliver_webhooks"]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "state",
                    "progress",
                    "error_type",
                    "error_message",
                    "retry_of_link",
                    "retries_links",
                )
            },
        ),
        (
            "Query",
            {
                "fields": (
                    "query",
                    "priority",
                    "model",
                    "intent",
                    "mcp_servers",
                    "hash",
                    "use_cache",
                    "cached_now",
                )
            },
        ),
        ("Answer", {"fields": ("response", "served_from_cache", "cli_output_pretty")}),
        (
            "Cost and tokens",
            {
                "fields": (
                    "cost_usd",
                    "input_tokens",
                    "output_tokens",
                    "cache_read_input_tokens",
                    "cache_creation_input_tokens",
                    "num_turns",
                    "session_id",
                )
            },
        ),
        (
            "Timings",
            {"fields": ("created_at", "started_at", "finished_at", "queue_wait", "run_time", "duration_ms")},
        ),
        ("Worker", {"fields": ("worker_name", "cli_pid", "exit_code", "stderr_tail", "rq_job_id")}),
        ("Webhook deliveries", {"fields": ("webhook_deliveries",)}),
    )

    @admin.display(description="query")
    def short_query(self, job: Job) -> str:
        return job.query[:80]

    @admin.display(description="CLI s", ordering="duration_ms")
    def cli_seconds(self, job: Job) -> str:
        return f"{job.duration_ms / 1000:.1f}" if job.duration_ms is not None else "—"

    @admin.display(description="retry of")
    def retry_of_link(self, job: Job) -> str:
        return _job_link(job.retry_of_id, str(job.retry_of_id)[:8]) if job.retry_of_id else "—"

    @admin.display(description="retried as")
    def retries_links(self, job: Job) -> str:
        retries = list(job.retries.values_list("id", "state"))
        if not retries:
            return "—"
        return format_html_join(", ", "{} ({})", ((_job_link(rid), state) for rid, state in retries))

    @admin.display(description="answer cached now")
    def cached_now(self, job: Job) -> str:
        try:
            entry = services.cache_get(query_hash=job.hash)
        except RedisError:
            return "unknown (Redis unavailable)"
        if entry is None:
            return "no"
        return (
            "yes, this job's answer" if entry["jobId"] == str(job.id) else f"yes, from job {entry['jobId']}"
        )

    @admin.display(description="CLI output (JSON)")
    def cli_output_pretty(self, job: Job) -> str:
        return _pre(job.cli_output)

    @admin.display(description="waited in queue")
    def queue_wait(self, job: Job) -> str:
        return _seconds(job.started_at - job.created_at) if job.started_at else "—"

    @admin.display(description="run time (start to finish)")
    def run_time(self, job: Job) -> str:
        return _seconds(job.finished_at - job.started_at) if job.started_at and job.finished_at else "—"

    @admin.display(description="deliveries of its requests")
    def webhook_deliveries(self, job: Job) -> str:
        from webhooks.models import WebhookDelivery

        return _deliveries_html(WebhookDelivery.objects.filter(request__job=job).order_by("created_at"))

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        kind, value = _search_term_kind(search_term)
        if kind == "uuid":
            # Two primary-key lookups; an OR with a subquery would make PostgreSQL scan every job.
            ids = [value, *QueryRequest.objects.filter(id=value).values_list("job_id", flat=True)]
            return queryset.filter(id__in=ids), False
        if kind == "hash":
            return queryset.filter(hash=value), False
        return queryset.filter(query__icontains=value), False

    # --- actions: each calls one service per job, reports, and is recorded in the admin log ---------

    @admin.action(
        description="Retry selected failed or cancelled jobs (a new job each)", permissions=["operate"]
    )
    def retry(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done, problems = [], []
        for job in queryset:
            try:
                retried = services.job_retry(job_id=job.id)
            except services.OperationRefused as exc:
                problems.append(str(exc))
                continue
            if retried.created:
                self.log_change(request, job, f"Retried as job {retried.job.id}.")
                done.append(f"{job.id} → {retried.job.id}")
            else:
                problems.append(f"Job {job.id}: an identical job is already in flight ({retried.job.id}).")
        _report(self, request, f"Retried {len(done)} job(s): {'; '.join(done)}.", done, problems)

    @admin.action(description="Cancel selected queued or running jobs", permissions=["operate"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        settled, stopping, problems = 0, 0, []
        for job in queryset:
            try:
                result = services.job_cancel(
                    job_id=job.id, reason=f"Cancelled by {request.user} in the admin."
                )
            except services.OperationRefused as exc:
                problems.append(str(exc))
                continue
            self.log_change(
                request, job, "Cancelled." if result == "cancelled" else "Cancellation requested."
            )
            if result == "cancelled":
                settled += 1
            else:
                stopping += 1
        text = f"Cancelled {settled} queued job(s)"
        if stopping:
            text += f"; {stopping} running job(s) are being stopped (their CLI is killed within a second)"
        _report(self, request, text + ".", settled + stopping, problems)

    @admin.action(description="Purge the cached answers of selected jobs", permissions=["operate"])
    def purge_cache(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        _purge(self, request, list(queryset.only("id", "hash")), "job(s)")

    @admin.action(description="Redeliver the webhooks of selected jobs' requests", permissions=["operate"])
    def redeliver_webhooks(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        from webhooks.models import WebhookDelivery

        deliveries = WebhookDelivery.objects.filter(request__job__in=queryset).select_related("request__job")
        _redeliver(self, request, deliveries, log_on=lambda d: d.request.job)


def _purge(model_admin: admin.ModelAdmin, request: HttpRequest, rows: list[Any], noun: str) -> None:
    """Purge the cached answers of jobs or requests (by their hash), logging each in the admin log."""
    try:
        deleted = services.cache_purge(query_hashes=[row.hash for row in rows])
    except RedisError as exc:
        model_admin.message_user(request, f"Redis is unavailable: {exc}", messages.ERROR)
        return
    for row in rows:
        model_admin.log_change(request, row, "Purged its query's cached answer.")
    model_admin.message_user(
        request, f"Purged {deleted} cached answer(s) for {len(rows)} {noun}.", messages.SUCCESS
    )


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():.2f} s"


def _report(
    model_admin: admin.ModelAdmin, request: HttpRequest, text: str, done: Any, problems: list[str]
) -> None:
    if done:
        model_admin.message_user(request, text, messages.SUCCESS)
    for problem in problems[:20]:
        model_admin.message_user(request, problem, messages.WARNING)
    if len(problems) > 20:
        model_admin.message_user(request, f"… and {len(problems) - 20} more.", messages.WARNING)


def _redeliver(model_admin: admin.ModelAdmin, request: HttpRequest, deliveries: Any, *, log_on: Any) -> None:
    from webhooks.services import webhook_delivery_redeliver

    count = 0
    for delivery in deliveries:
        webhook_delivery_redeliver(delivery=delivery)
        model_admin.log_change(request, log_on(delivery), f"Redelivered webhook {delivery.id}.")
        count += 1
    if count:
        model_admin.message_user(
            request, f"Queued {count} webhook deliver{'y' if count == 1 else 'ies'} again."
        )
    else:
        model_admin.message_user(
            request, "None of the selected rows has a webhook delivery.", messages.WARNING
        )


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
    list_display = ("id", "outcome", "job_link", "api_key", "priority", "short_query", "created_at")
    list_filter = (
        ("created_at", admin.DateFieldListFilter),
        "outcome",
        RequestJobTroubleFilter,
        "priority",
        "api_key",
    )
    list_select_related = ("job", "api_key")
    raw_id_fields = ("job", "api_key")
    actions = ["purge_cache", "redeliver_webhooks"]
    fieldsets = (
        (None, {"fields": ("id", "outcome", "job_link", "api_key", "created_at")}),
        ("Submission", {"fields": ("query", "priority", "model", "no_cache", "hash", "metadata_pretty")}),
        ("Outcome", {"fields": ("job_state", "answer", "job_error", "cost")}),
        ("Webhook", {"fields": ("webhook_url", "webhook")}),
    )

    @admin.display(description="job")
    def job_link(self, request: QueryRequest) -> str:
        return _job_link(request.job_id, f"{request.job_id} ({request.job.state})")

    @admin.display(description="query")
    def short_query(self, request: QueryRequest) -> str:
        return request.query[:80]

    @admin.display(description="metadata")
    def metadata_pretty(self, request: QueryRequest) -> str:
        return _pre(request.metadata)

    @admin.display(description="job state")
    def job_state(self, request: QueryRequest) -> str:
        return request.job.get_state_display()

    @admin.display(description="answer")
    def answer(self, request: QueryRequest) -> str:
        return _pre(request.job.response) if request.job.state == Job.State.COMPLETED else "—"

    @admin.display(description="error")
    def job_error(self, request: QueryRequest) -> str:
        job = request.job
        return f"{job.error_type}: {job.error_message}" if job.error_type else "—"

    @admin.display(description="cost (the job's, USD)")
    def cost(self, request: QueryRequest) -> str:
        return str(request.job.cost_usd) if request.job.cost_usd is not None else "—"

    @admin.display(description="delivery")
    def webhook(self, request: QueryRequest) -> str:
        from webhooks.models import WebhookDelivery

        return _deliveries_html(WebhookDelivery.objects.filter(request=request))

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        kind, value = _search_term_kind(search_term)
        if kind == "uuid":
            return queryset.filter(Q(id=value) | Q(job_id=value)), False
        if kind == "hash":
            return queryset.filter(hash=value), False
        return queryset.filter(query__icontains=value), False

    @admin.action(description="Purge the cached answers of selected requests", permissions=["operate"])
    def purge_cache(self, request: HttpRequest, queryset: QuerySet[QueryRequest]) -> None:
        _purge(self, request, list(queryset.select_related("job")), "request(s)")

    @admin.action(description="Redeliver the webhooks of selected requests", permissions=["operate"])
    def redeliver_webhooks(self, request: HttpRequest, queryset: QuerySet[QueryRequest]) -> None:
        from webhooks.models import WebhookDelivery

        deliveries = WebhookDelivery.objects.filter(request__in=queryset).select_related("request")
        _redeliver(self, request, deliveries, log_on=lambda d: d.request)


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
    list_display = (
        "name",
        "prefix",
        "is_active",
        "expires_at",
        "rate_limit_per_minute",
        "max_concurrent_jobs",
        "spend_this_month",
        "requests_30d",
        "last_used_at",
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
