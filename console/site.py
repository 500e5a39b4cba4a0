"""The admin site: the operators' dashboard on its index page, and the cache page.

``console.apps.GatewayAdminConfig`` replaces ``django.contrib.admin`` in INSTALLED_APPS so that
``admin.site`` (and every ``@admin.register``) is this site.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse
from django.utils import timezone
from redis.exceptions import RedisError

from console.charts import dashboard_charts
from queries import services

PURGE_PERMISSION = "queries.change_job"


class GatewayAdminSite(admin.AdminSite):
    site_header = "Claude gateway"
    site_title = "Claude gateway admin"
    index_title = "Dashboard"
    # The gateway has no site to view (/ answers with the API's JSON 404): the header links the API
    # docs instead (templates/admin/base_site.html).
    site_url = None
    # The lists need the width of a laptop screen; the dashboard and breadcrumbs lead to every page.
    enable_nav_sidebar = False

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        context: dict[str, Any] = {}
        try:
            # The cache count walks Redis's keyspace; it is on the cache page, not on every index load.
            figures = services.dashboard_figures(include_cache=False)
            context.update(
                dashboard=figures,
                charts=dashboard_charts(figures),
                breaker=services.breaker_status(),
                **times_for_people(figures),
            )
        except RedisError as exc:
            context["dashboard_error"] = f"Redis is unavailable: {exc}"
        return super().index(request, {**context, **(extra_context or {})})

    def get_urls(self) -> list[URLResolver | URLPattern]:
        return [
            path("cache/", self.admin_view(self.cache_view), name="cache"),
            path("cache/purge-all/", self.admin_view(self.cache_purge_all_view), name="cache_purge_all"),
            *super().get_urls(),
        ]

    def cache_view(self, request: HttpRequest) -> HttpResponse:
        """Cached answers and memory, the hit ratio, and purging by hash (POST)."""
        if request.method == "POST" and request.POST.get("hash") is not None:
            if not request.user.has_perm(PURGE_PERMISSION):
                messages.error(request, "Purging the cache needs the permission to change jobs.")
                return HttpResponseRedirect(reverse("admin:cache"))
            try:
                query_hash = services.cache_hash_check(request.POST["hash"])
                deleted = services.cache_purge(query_hashes=[query_hash])
            except ValueError as exc:
                messages.error(request, str(exc))
            except RedisError as exc:
                messages.error(request, f"Redis is unavailable: {exc}")
            else:
                if deleted:
                    log_operation(request, f"Purged the cached answer of {query_hash}.", repr_="cache")
                    messages.success(request, f"Purged the cached answer of {query_hash}.")
                else:
                    messages.warning(request, f"No cached answer for {query_hash}.")
            return HttpResponseRedirect(reverse("admin:cache"))

        context: dict[str, Any] = {
            **self.each_context(request),
            "title": "Cache",
            "can_purge": request.user.has_perm(PURGE_PERMISSION),
            "requests": services.request_figures(since=timezone.now() - timedelta(hours=24)),
        }
        try:
            context["cache"] = services.cache_figures()
        except RedisError as exc:
            context["cache_error"] = f"Redis is unavailable: {exc}"
        return TemplateResponse(request, "admin/cache.html", context)

    def cache_purge_all_view(self, request: HttpRequest) -> HttpResponse:
        """GET: a confirmation page naming how many answers would go; POST: purge them all."""
        if not request.user.has_perm(PURGE_PERMISSION):
            messages.error(request, "Purging the cache needs the permission to change jobs.")
            return HttpResponseRedirect(reverse("admin:cache"))
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            try:
                deleted = services.cache_purge_all()
            except RedisError as exc:
                messages.error(request, f"Redis is unavailable: {exc}")
            else:
                log_operation(request, f"Purged all cached answers ({deleted} entries).", repr_="cache")
                messages.success(request, f"Purged all cached answers: {deleted} entries deleted.")
            return HttpResponseRedirect(reverse("admin:cache"))
        context: dict[str, Any] = {**self.each_context(request), "title": "Purge the whole cache?"}
        try:
            context["cache"] = services.cache_figures()
        except RedisError as exc:
            context["cache_error"] = f"Redis is unavailable: {exc}"
        return TemplateResponse(request, "admin/cache_purge_all.html", context)


def times_for_people(figures: dict[str, Any]) -> dict[str, Any]:
    """The figures' ISO times as datetimes, which templates write in the admin's DATETIME_FORMAT."""
    return {
        "generated_at": datetime.fromisoformat(figures["generatedAt"]),
        "last_failures": [
            {
                **failure,
                "finished": datetime.fromisoformat(failure["finishedAt"]) if failure["finishedAt"] else None,
            }
            for failure in figures["lastFailures"]
        ],
        "top_keys_since": datetime.fromisoformat(figures["topKeys"]["since"]),
    }


def log_operation(request: HttpRequest, message: str, *, obj: Any = None, repr_: str = "") -> None:
    """Record an operator's action in the admin log ("Recent actions", the LogEntry table)."""
    user_id = request.user.pk
    if user_id is None:  # admin_view lets only staff in
        raise PermissionDenied
    LogEntry.objects.create(
        user_id=user_id,
        content_type=ContentType.objects.get_for_model(obj, for_concrete_model=False) if obj else None,
        object_id=str(obj.pk) if obj is not None else None,
        object_repr=(str(obj) if obj is not None else repr_)[:200],
        action_flag=CHANGE,
        change_message=message,
    )
