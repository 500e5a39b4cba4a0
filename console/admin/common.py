"""What every operator page shares: read-only records, capped counts, links, reports, and the log."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any, cast

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from redis.exceptions import RedisError

from queries import services
from webhooks.services import webhook_delivery_redeliver

OPERATE_PERMISSION = "queries.change_job"


class CappedCountPaginator(Paginator):
    """Counts at most CAP rows: COUNT(*) over a big table reads every row, on every page load.

    Past the cap the changelist shows "10000" results and that many pages; narrowing by date or a
    filter reaches the rest.
    """

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        return cast(QuerySet[Any], self.object_list).order_by()[: self.CAP].count()


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records of what happened: operators read them, services write them, nobody deletes them here."""

    paginator = CappedCountPaginator
    show_full_result_count = False
    search_fields = ("query",)  # shows the search box; get_search_results decides what a term means
    search_help_text = "A job or request id, a query hash, or words from the query."

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # The database is the record (README): no "Delete selected" action, no delete button.
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        # Records are never edited in a form; acting on them (retry, cancel, purge) needs this.
        return request.user.has_perm(OPERATE_PERMISSION)


def search_term_kind(term: str) -> tuple[str, Any]:
    term = term.strip()
    try:
        return "uuid", uuid.UUID(term)
    except ValueError:
        pass
    try:
        return "hash", services.cache_hash_check(term)
    except ValueError:
        return "text", term


def short_id(row_id: Any) -> str:
    """An id's first 8 characters for a list column (the whole id in its tooltip and on the row's page)."""
    return format_html('<span title="{}">{}</span>', row_id, str(row_id)[:8])


def money(value: Any) -> str:
    return f"${value:.4f}" if value is not None else "—"


def pre(value: Any) -> str:
    if value in (None, "", [], {}):
        return "—"
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', text)


def job_link_html(job_id: Any, label: str | None = None) -> str:
    if job_id is None:
        return "—"
    url = reverse("admin:queries_job_change", args=[job_id])
    return format_html('<a href="{}">{}</a>', url, label or job_id)


def deliveries_html(deliveries: Any) -> str:
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


def purge_cached(model_admin: admin.ModelAdmin, request: HttpRequest, rows: list[Any], noun: str) -> None:
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


def seconds_text(delta: timedelta) -> str:
    return f"{delta.total_seconds():.2f} s"


def report(
    model_admin: admin.ModelAdmin, request: HttpRequest, text: str, done: Any, problems: list[str]
) -> None:
    if done:
        model_admin.message_user(request, text, messages.SUCCESS)
    for problem in problems[:20]:
        model_admin.message_user(request, problem, messages.WARNING)
    if len(problems) > 20:
        model_admin.message_user(request, f"… and {len(problems) - 20} more.", messages.WARNING)


def redeliver(model_admin: admin.ModelAdmin, request: HttpRequest, deliveries: Any, *, log_on: Any) -> None:
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
