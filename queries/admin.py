from django.contrib import admin
from django.utils.html import format_html

from queries.models import ApiKey, Job, QueryRequest


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records of what happened: operators read them, services write them."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class QueryRequestInline(admin.TabularInline):
    model = QueryRequest
    fields = ("id", "outcome", "api_key", "priority", "webhook_url", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "state",
        "progress",
        "priority",
        "intent",
        "short_query",
        "error_type",
        "cost_usd",
        "created_at",
        "finished_at",
    )
    list_filter = ("state", "priority", "intent", "error_type", "served_from_cache")
    search_fields = ("=id", "=hash", "normalized_query")
    date_hierarchy = "created_at"
    show_full_result_count = False
    inlines = [QueryRequestInline]

    @admin.display(description="query")
    def short_query(self, job: Job) -> str:
        return job.query[:80]


@admin.register(QueryRequest)
class QueryRequestAdmin(ReadOnlyAdmin):
    list_display = ("id", "outcome", "job_link", "api_key", "priority", "short_query", "created_at")
    list_filter = ("outcome", "priority", "api_key")
    list_select_related = ("job", "api_key")
    raw_id_fields = ("job", "api_key")
    search_fields = ("=id", "=job__id", "=hash", "query")
    date_hierarchy = "created_at"
    show_full_result_count = False

    @admin.display(description="job")
    def job_link(self, request: QueryRequest):
        return format_html(
            '<a href="../job/{}/change/">{} ({})</a>', request.job_id, request.job_id, request.job.state
        )

    @admin.display(description="query")
    def short_query(self, request: QueryRequest) -> str:
        return request.query[:80]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "is_active", "created_at", "last_used_at")
    list_filter = ("is_active",)
    search_fields = ("name", "prefix")
    readonly_fields = ("prefix", "created_at", "last_used_at")
    fields = ("name", "prefix", "is_active", "created_at", "last_used_at")

    def has_add_permission(self, request, obj=None) -> bool:
        # A key's plaintext must be shown once at creation: `manage.py create_api_key NAME`.
        return False
