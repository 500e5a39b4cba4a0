"""Jobs: every CLI execution, with filters for the questions operators ask, and their actions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html_join
from redis.exceptions import RedisError

from console.admin.common import (
    ReadOnlyAdmin,
    deliveries_html,
    job_link_html,
    money,
    pre,
    purge_cached,
    redeliver,
    report,
    search_term_kind,
    seconds_text,
    short_id,
)
from console.admin.sessions import session_link_html
from queries import services
from queries.models import ApiKey, Job, QueryRequest, Session
from routing.models import IntentRule
from webhooks.models import WebhookDelivery

# A job whose CLI ran this long (or timed out) shows under the "slow" filter.
SLOW_SECONDS = 30


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
        value = self.value()
        if not value:
            return queryset
        own = QueryRequest.objects.filter(job_id=OuterRef("pk"), api_key_id=int(value))
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
    # What an operator scans, narrow enough for a 1366-pixel screen; the rest is on the job's page.
    list_display = (
        "job_id",
        "state",
        "intent",
        "short_query",
        "error_type",
        "cost",
        "cli_seconds",
        "created_at",
    )
    list_display_links = ("job_id",)
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
                    "system_prompt",
                    "prompt_blocks",
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
        ("Answer", {"fields": ("response", "stop_reason", "served_from_cache", "cli_output_pretty")}),
        (
            "Conversation",
            {"fields": ("turn_number", "session_mode", "session_note", "continues_session", "own_session")},
        ),
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

    @admin.display(description="job")
    def job_id(self, job: Job) -> str:
        return short_id(job.id)

    @admin.display(description="continues session")
    def continues_session(self, job: Job) -> str:
        return session_link_html(job.session_parent)

    @admin.display(description="its session")
    def own_session(self, job: Job) -> str:
        return session_link_html(Session.objects.filter(job=job).first())

    @admin.display(description="query")
    def short_query(self, job: Job) -> str:
        return job.query[:80]

    @admin.display(description="cost", ordering="cost_usd")
    def cost(self, job: Job) -> str:
        return money(job.cost_usd)

    @admin.display(description="content blocks")
    def prompt_blocks(self, job: Job) -> str:
        """The blocks sent to the CLI, an image as its media type and size rather than its data."""
        blocks = [_block_summary(block) for block in job.prompt_content or []]
        return pre(blocks)

    @admin.display(description="CLI s", ordering="duration_ms")
    def cli_seconds(self, job: Job) -> str:
        return f"{job.duration_ms / 1000:.1f}" if job.duration_ms is not None else "—"

    @admin.display(description="retry of")
    def retry_of_link(self, job: Job) -> str:
        return job_link_html(job.retry_of_id, str(job.retry_of_id)[:8]) if job.retry_of_id else "—"

    @admin.display(description="retried as")
    def retries_links(self, job: Job) -> str:
        retries = list(job.retries.values_list("id", "state"))
        if not retries:
            return "—"
        return format_html_join(", ", "{} ({})", ((job_link_html(rid), state) for rid, state in retries))

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
        return pre(job.cli_output)

    @admin.display(description="waited in queue")
    def queue_wait(self, job: Job) -> str:
        return seconds_text(job.started_at - job.created_at) if job.started_at else "—"

    @admin.display(description="run time (start to finish)")
    def run_time(self, job: Job) -> str:
        return seconds_text(job.finished_at - job.started_at) if job.started_at and job.finished_at else "—"

    @admin.display(description="deliveries of its requests")
    def webhook_deliveries(self, job: Job) -> str:
        return deliveries_html(WebhookDelivery.objects.filter(request__job=job).order_by("created_at"))

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        kind, value = search_term_kind(search_term)
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
        report(self, request, f"Retried {len(done)} job(s): {'; '.join(done)}.", done, problems)

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
        report(self, request, text + ".", settled + stopping, problems)

    @admin.action(description="Purge the cached answers of selected jobs", permissions=["operate"])
    def purge_cache(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        purge_cached(self, request, list(queryset.only("id", "hash")), "job(s)")

    @admin.action(description="Redeliver the webhooks of selected jobs' requests", permissions=["operate"])
    def redeliver_webhooks(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        deliveries = WebhookDelivery.objects.filter(request__job__in=queryset).select_related("request__job")
        redeliver(self, request, deliveries, log_on=lambda d: d.request.job)


def _block_summary(block: Any) -> Any:
    if isinstance(block, dict) and block.get("type") == "image":
        source = block.get("source") or {}
        data = source.get("data")
        size = f"{len(data) * 3 // 4} bytes" if isinstance(data, str) else "?"
        return {"type": "image", "media_type": source.get("media_type"), "size": size}
    return block
