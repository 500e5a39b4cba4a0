"""Conversation sessions: each answered turn's CLI session, its conversation, and the jobs behind it."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from console.admin.common import ReadOnlyAdmin, job_link_html
from queries.models import Session
from queries.services.sessions import TRANSCRIPT_MAX_TURNS, session_lineage

LIST_TEXT = 80


def session_link_html(session: Session | None) -> str:
    if session is None:
        return "—"
    url = reverse("admin:queries_session_change", args=[session.pk])
    return format_html('<a href="{}">{}</a>', url, session.cli_session_id)


class LiveFilter(admin.SimpleListFilter):
    title = "expiry"
    parameter_name = "live"

    def lookups(self, request, model_admin):
        return [("yes", "Live"), ("no", "Expired (purge_sessions removes them)")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(expires_at__gt=timezone.now())
        if self.value() == "no":
            return queryset.filter(expires_at__lte=timezone.now())
        return queryset


@admin.register(Session)
class SessionAdmin(ReadOnlyAdmin):
    list_display = (
        "cli_session_id",
        "api_key",
        "turns",
        "mode",
        "size_bytes",
        "input_tokens",
        "cache_read_input_tokens",
        "last_used_at",
        "expires_at",
    )
    list_filter = (LiveFilter, ("last_used_at", admin.DateFieldListFilter), "api_key")
    list_select_related = ("api_key", "job")
    raw_id_fields = ("api_key", "job", "parent")
    search_fields = ("cli_session_id",)
    search_help_text = "A CLI session id or a lineage hash."
    actions = ["delete_selected"]
    fields = (
        "cli_session_id",
        "api_key",
        "turns",
        "lineage_hash",
        "parent_link",
        "children_links",
        "conversation",
        "size_bytes",
        "kept",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "created_at",
        "last_used_at",
        "expires_at",
    )
    readonly_fields = fields

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Session], search_term: str
    ) -> tuple[QuerySet[Session], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        if len(term) == 64:
            return queryset.filter(lineage_hash=term.lower()), False
        return queryset.filter(cli_session_id=term), False

    def has_delete_permission(self, request, obj=None) -> bool:
        return self.has_operate_permission(request)

    @admin.display(description="how it ran")
    def mode(self, session: Session) -> str:
        return session.job.get_session_mode_display() if session.job is not None else "—"

    @admin.display(description="continues")
    def parent_link(self, session: Session) -> str:
        return session_link_html(session.parent)

    @admin.display(description="continued by")
    def children_links(self, session: Session) -> str:
        children = list(session.children.order_by("created_at")[:50])
        if not children:
            return "—"
        return format_html_join(", ", "{}", ((session_link_html(child),) for child in children))

    @admin.display(description="file kept", boolean=True)
    def kept(self, session: Session) -> bool:
        return session.content is not None

    @admin.display(description="turns: request, job, answer")
    def conversation(self, session: Session) -> str:
        """Every turn up to this one, oldest first: its requests, its job and how it ran."""
        rows = []
        for turn in session_lineage(session=session, limit=TRANSCRIPT_MAX_TURNS):
            job = turn.job
            if job is None:
                rows.append((turn.turns, "—", "(job deleted)", "", ""))
                continue
            requests = ", ".join(f"{r.outcome} via {r.api}" for r in job.requests.all()[:10]) or "—"
            rows.append(
                (
                    turn.turns,
                    job_link_html(job.id, job.get_session_mode_display() or "job"),
                    job.query[-LIST_TEXT:],
                    job.response[:LIST_TEXT],
                    requests,
                )
            )
        return format_html(
            "<ol style='margin: 0; padding-left: 1.5em'>{}</ol>",
            format_html_join("", "<li value='{}'>{}: “{}” → “{}” ({})</li>", rows),
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Session]) -> None:
        count = queryset.count()
        super().delete_queryset(request, queryset)
        self.message_user(
            request, f"Deleted {count} session(s): they can no longer be continued.", messages.SUCCESS
        )
