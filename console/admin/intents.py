from typing import Any

from django import forms
from django.contrib import admin
from django.db import models
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import path

from routing.models import IntentRule, McpServer
from routing.patterns import pattern_lines
from routing.services import route_preview

MASK = "***"


@admin.register(McpServer)
class McpServerAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "transport",
        "command",
        "shown_args",
        "secret_names",
        "workdir",
        "enabled",
        "updated_at",
    )
    list_filter = ("enabled", "transport")
    list_editable = ("enabled",)
    search_fields = ("name", "command", "description")
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    fieldsets = (
        (None, {"fields": ("name", "enabled", "description")}),
        ("stdio", {"fields": ("command", "args", "env", "workdir")}),
        ("http / sse", {"fields": ("transport", "url", "headers")}),
    )

    @admin.display(description="args")
    def shown_args(self, server: McpServer) -> str:
        return " ".join(server.args or [])[:120]

    @admin.display(description="env / headers")
    def secret_names(self, server: McpServer) -> str:
        names = [*(server.env or {}), *(server.headers or {})]
        return ", ".join(f"{name}={MASK}" for name in names)


@admin.register(IntentRule)
class IntentRuleAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "order",
        "enabled",
        "pattern_summary",
        "exclusion_count",
        "server_names",
        "cache_ttl",
        "updated_at",
    )
    list_display_links = ("name",)
    list_editable = ("order", "enabled")
    list_filter = ("enabled", "servers")
    search_fields = ("name", "pattern", "exclusions", "description")
    filter_horizontal = ("servers",)
    ordering = ("order", "name")
    change_list_template = "admin/routing/intentrule/change_list.html"

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).prefetch_related("servers")

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name in ("pattern", "exclusions"):
            # One regular expression per line: long lines, read as code.
            kwargs["widget"] = forms.Textarea(
                attrs={"rows": 14, "cols": 110, "wrap": "off", "style": "font-family: monospace"}
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    @admin.display(description="pattern")
    def pattern_summary(self, rule: IntentRule) -> str:
        lines = pattern_lines(rule.pattern)
        first = lines[0] if lines else ""
        return first[:80] + (f"  (+{len(lines) - 1} lines)" if len(lines) > 1 else "")

    @admin.display(description="exclusions")
    def exclusion_count(self, rule: IntentRule) -> int:
        return len(pattern_lines(rule.exclusions))

    @admin.display(description="MCP servers")
    def server_names(self, rule: IntentRule) -> str:
        return ", ".join(s.name + ("" if s.enabled else " (disabled)") for s in rule.servers.all()) or "—"

    def get_urls(self):
        return [
            path("test/", self.admin_site.admin_view(self.test_view), name="routing_intentrule_test"),
            *super().get_urls(),
        ]

    def test_view(self, request: HttpRequest) -> TemplateResponse:
        """Route a query as a submission would: the rule line and text behind the route, the exclusions
        that set text aside, and the CLI argv a worker would run (masked)."""
        query = request.POST.get("query", "") if request.method == "POST" else request.GET.get("query", "")
        preview = route_preview(query=query) if query.strip() else None
        context = {
            **self.admin_site.each_context(request),
            "title": "Test a query against the intent rules",
            "opts": self.model._meta,
            "query": query,
            "preview": preview,
            "has_view_permission": self.has_view_permission(request),
        }
        return TemplateResponse(request, "admin/routing/test_route.html", context)
