"""Intent detection: which MCP servers a query calls for, from operator-editable rules.

Patterns come from operators and queries from anyone, so matching uses RE2 (linear time in the
query's length, no catastrophic backtracking). A rule's exclusions blank out the everyday uses of
its words before its pattern is tried, so only real evidence of an intent routes a query to a
server. No model is asked: routing costs a few regular expression searches. Compiled rules are
cached per process and reloaded from the database at most ROUTING_REFRESH_SECONDS after they were
loaded, so an edit made in any process reaches every web and worker process within that time,
without a restart.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models.signals import m2m_changed, post_delete, post_save

from claude_cli.invocation import ClaudeInvocation, RunnerConfig, masked_mcp_config, preview_argv
from routing.models import IntentRule, McpServer
from routing.patterns import (
    LineMatch,
    PatternError,
    compile_exclusions,
    compile_pattern,
    first_line_match,
    line_matches,
    mask,
)

GENERAL_INTENT = "general"


class McpUnavailable(RuntimeError):
    """A server a job was routed to is gone or disabled."""


@dataclass(frozen=True)
class Route:
    """The routing decision for one query: its intent and the MCP servers the CLI gets."""

    intent: str = GENERAL_INTENT
    # name -> the CLI's server entry; only names are ever logged, stored on jobs or hashed.
    servers: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    cache_ttl: int | None = None
    workdir: str | None = None

    @property
    def server_names(self) -> list[str]:
        return sorted(self.servers)

    @property
    def cacheable(self) -> bool:
        return self.cache_ttl != 0

    def mcp_config(self) -> dict[str, Any] | None:
        return (
            {"mcpServers": {name: self.servers[name] for name in self.server_names}} if self.servers else None
        )

    def allowed_tools(self) -> tuple[str, ...]:
        # A bare mcp__<server> rule allows every tool that server offers, whatever they are named.
        return tuple(f"mcp__{name}" for name in self.server_names)


@dataclass(frozen=True)
class _Rule:
    order: int
    pattern: str
    exclusions: str
    route: Route
    regex: Any = field(compare=False)
    exclusion_regex: Any = field(compare=False)

    def matches(self, query: str) -> bool:
        return self.regex.search(mask(self.exclusion_regex, query)) is not None


# Routes of recent queries, per set of rules loaded: a repeated query (a cache hit) skips the patterns.
_ROUTES_REMEMBERED = 4096
_ROUTE_QUERY_MAX_CHARS = 2000


class _RuleCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._routes: dict[str, Route] = {}
        self._loaded_at = float("-inf")

    def rules(self) -> list[_Rule]:
        if time.monotonic() - self._loaded_at >= settings.ROUTING_REFRESH_SECONDS:
            with self._lock:
                if time.monotonic() - self._loaded_at >= settings.ROUTING_REFRESH_SECONDS:
                    rules = _load_rules()
                    if rules != self._rules:
                        self._rules, self._routes = rules, {}
                    self._loaded_at = time.monotonic()
        return self._rules

    def route(self, query: str) -> Route:
        rules = self.rules()
        routes = self._routes
        route = routes.get(query)
        if route is None:
            route = next((rule.route for rule in rules if rule.matches(query)), Route())
            if len(query) <= _ROUTE_QUERY_MAX_CHARS and rules is self._rules:
                if len(routes) >= _ROUTES_REMEMBERED:
                    routes.clear()
                routes[query] = route
        return route

    def route_held(self, query: str) -> Route | None:
        """route() when the rules need no reload from the database, else None."""
        if time.monotonic() - self._loaded_at >= settings.ROUTING_REFRESH_SECONDS:
            return None
        return self.route(query)

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")


def _load_rules() -> list[_Rule]:
    rules = []
    for rule in IntentRule.objects.filter(enabled=True).prefetch_related("servers").order_by("order", "name"):
        try:
            regex = compile_pattern(rule.pattern)
            exclusion_regex = compile_exclusions(rule.exclusions)
        except PatternError:
            continue  # refused at save time; a row written around the admin must not break routing
        servers = sorted((s for s in rule.servers.all() if s.enabled), key=lambda s: s.name)
        route = Route(
            intent=rule.name,
            servers={s.name: s.cli_entry() for s in servers},
            cache_ttl=rule.cache_ttl,
            workdir=next((s.workdir for s in servers if s.workdir), None),
        )
        rules.append(
            _Rule(
                order=rule.order,
                pattern=rule.pattern,
                exclusions=rule.exclusions,
                route=route,
                regex=regex,
                exclusion_regex=exclusion_regex,
            )
        )
    return rules


_cache = _RuleCache()


def routing_invalidate(**kwargs: Any) -> None:
    """Drop this process's compiled rules (other processes reload within ROUTING_REFRESH_SECONDS)."""
    _cache.invalidate()


def routing_invalidation_connect() -> None:
    """Drop compiled rules in this process whenever a rule or server is saved or deleted."""
    for model in (IntentRule, McpServer):
        post_save.connect(routing_invalidate, sender=model, dispatch_uid=f"routing-save-{model.__name__}")
        post_delete.connect(routing_invalidate, sender=model, dispatch_uid=f"routing-delete-{model.__name__}")
    m2m_changed.connect(routing_invalidate, sender=IntentRule.servers.through, dispatch_uid="routing-m2m")


def route_query(*, query: str) -> Route:
    """The first enabled rule (by order) whose pattern matches; ``general`` with no server otherwise."""
    if not settings.MCP_ENABLED:
        return Route()
    return _cache.route(query)


def route_query_held(*, query: str) -> Route | None:
    """route_query's answer when it needs no database read (the rules are loaded and fresh), else None."""
    if not settings.MCP_ENABLED:
        return Route()
    return _cache.route_held(query)


def route_for_job(*, intent: str, server_names: list[str]) -> Route:
    """The route a job was submitted with, with its servers' configuration as it is now.

    Only server names are stored on jobs (never their secrets); a server that was removed or
    disabled since the job was routed raises McpUnavailable rather than running with other tools.
    """
    rule = IntentRule.objects.filter(name=intent).only("cache_ttl").first()
    cache_ttl = rule.cache_ttl if rule is not None else None
    if not server_names:
        return Route(intent=intent, cache_ttl=cache_ttl)
    servers = {s.name: s for s in McpServer.objects.filter(name__in=server_names, enabled=True)}
    missing = sorted(set(server_names) - set(servers))
    if missing:
        raise McpUnavailable(
            f"MCP server(s) {', '.join(missing)} are no longer configured or enabled; submit the query again."
        )
    ordered = [servers[name] for name in sorted(servers)]
    return Route(
        intent=intent,
        servers={s.name: s.cli_entry() for s in ordered},
        cache_ttl=cache_ttl,
        workdir=next((s.workdir for s in ordered if s.workdir), None),
    )


@dataclass(frozen=True)
class RuleCheck:
    """Why one rule did or did not decide a query's route."""

    intent: str
    order: int
    # The pattern line that matched the query outside its excluded text, and what it matched.
    matched: LineMatch | None
    # The exclusion lines that set text aside, and that text.
    excluded: list[LineMatch]
    # The pattern line that matched only inside excluded text: the exclusions vetoed this rule.
    vetoed: LineMatch | None


@dataclass(frozen=True)
class RouteExplanation:
    """The rules a query was tried against, in order, up to the one that decided its route."""

    route: Route
    mcp_enabled: bool
    checks: list[RuleCheck]

    @property
    def deciding(self) -> RuleCheck | None:
        return self.checks[-1] if self.checks and self.checks[-1].matched else None

    @property
    def vetoed(self) -> list[RuleCheck]:
        return [check for check in self.checks if check.vetoed is not None]


def route_explain(*, query: str) -> RouteExplanation:
    """Route a query as route_query does and say why: which line of which rule matched what text,
    and which exclusions kept other rules from matching. Meant for operators, not the hot path."""
    checks = []
    route = Route()
    for rule in _cache.rules():
        masked = mask(rule.exclusion_regex, query)
        matched = rule.regex.search(masked) is not None
        excluded = line_matches(rule.exclusions, query) if masked != query else []
        vetoed = None
        if not matched and excluded and rule.regex.search(query) is not None:
            vetoed = first_line_match(rule.pattern, query)
        if matched or vetoed:
            checks.append(
                RuleCheck(
                    intent=rule.route.intent,
                    order=rule.order,
                    matched=first_line_match(rule.pattern, masked, shown=query) if matched else None,
                    excluded=excluded,
                    vetoed=vetoed,
                )
            )
        if matched:
            route = rule.route
            break
    enabled = bool(settings.MCP_ENABLED)
    return RouteExplanation(route=route if enabled else Route(), mcp_enabled=enabled, checks=checks)


@dataclass(frozen=True)
class RoutePreview:
    """What would happen to a query: the route, the rule that matched, and the CLI argv (masked)."""

    route: Route
    rule_order: int | None
    explanation: RouteExplanation
    argv: list[str]
    mcp_config: dict[str, Any] | None
    workdir: str


def route_preview(*, query: str) -> RoutePreview:
    """Route a query as a submission would and show the CLI argv a worker would run, secrets masked."""
    route = route_query(query=query)
    explanation = route_explain(query=query)
    deciding = explanation.deciding
    invocation = ClaudeInvocation(
        prompt=query,
        mcp_config=route.mcp_config(),
        allowed_tools=route.allowed_tools(),
        workdir=route.workdir,
    )
    config = RunnerConfig.from_settings(settings)
    return RoutePreview(
        route=route,
        rule_order=deciding.order if deciding is not None and route.intent == deciding.intent else None,
        explanation=explanation,
        argv=preview_argv(invocation, config),
        mcp_config=masked_mcp_config(route.mcp_config()),
        workdir=str(route.workdir or config.workdir or ""),
    )
