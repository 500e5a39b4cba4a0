from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models

from routing.patterns import PatternError, compile_exclusions, compile_pattern

# The CLI names a server's tools mcp__<name>__<tool>: keep names to characters that survive that.
server_name_validator = RegexValidator(
    r"^[A-Za-z0-9_-]{1,64}$", "Letters, digits, _ and - only (the name appears in mcp__<name>__<tool>)."
)
FILESYSTEM_SERVER_MARKERS = ("mcp-server-filesystem", "@modelcontextprotocol/server-filesystem")


def _string_list(value: Any, field: str) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError({field: "Must be a JSON list of strings."})


def _string_map(value: Any, field: str) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValidationError({field: 'Must be a JSON object of strings, e.g. {"TOKEN": "..."}.'})


class McpServer(models.Model):
    """An MCP server the CLI may be given, as the CLI's --mcp-config describes one."""

    class Transport(models.TextChoices):
        STDIO = "stdio", "stdio (a command the CLI starts)"
        HTTP = "http", "HTTP (streamable)"
        SSE = "sse", "Server-sent events"

    name = models.CharField(max_length=64, unique=True, validators=[server_name_validator])
    transport = models.CharField(max_length=8, choices=Transport.choices, default=Transport.STDIO)
    command = models.CharField(max_length=500, blank=True, help_text="stdio: the program to start.")
    args = models.JSONField(default=list, blank=True, help_text="stdio: a JSON list of arguments.")
    env = models.JSONField(
        default=dict,
        blank=True,
        help_text="stdio: environment for the server (secrets stay here and are masked).",
    )
    url = models.URLField(max_length=2000, blank=True, help_text="http/sse: the server's URL.")
    headers = models.JSONField(
        default=dict, blank=True, help_text="http/sse: request headers (secrets stay here and are masked)."
    )
    workdir = models.CharField(
        max_length=1000,
        blank=True,
        help_text=(
            "The CLI's working directory when this server is attached (default CLAUDE_WORKDIR). "
            "The filesystem server serves the CLI's working directory (its MCP roots), whatever its "
            "arguments say, so for it this is the directory it exposes; it is filled from the first "
            "absolute directory argument."
        ),
    )
    enabled = models.BooleanField(default=True)
    description = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "MCP server"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        _string_list(self.args, "args")
        _string_map(self.env, "env")
        _string_map(self.headers, "headers")
        if self.transport == self.Transport.STDIO:
            if not self.command.strip():
                raise ValidationError({"command": "A stdio server needs a command."})
        elif not self.url:
            raise ValidationError({"url": "An http or sse server needs a URL."})
        if self.workdir and not PurePosixPath(self.workdir).is_absolute():
            raise ValidationError({"workdir": "Must be an absolute path."})
        if not self.workdir and self.is_filesystem_server:
            absolute = [a for a in self.args if a.startswith("/")]
            if absolute:
                self.workdir = absolute[0]

    @property
    def is_filesystem_server(self) -> bool:
        words = [self.command, *(self.args if isinstance(self.args, list) else [])]
        return any(marker in str(word) for word in words for marker in FILESYSTEM_SERVER_MARKERS)

    def cli_entry(self) -> dict[str, Any]:
        """This server as an entry of the CLI's {"mcpServers": {...}} configuration."""
        if self.transport == self.Transport.STDIO:
            entry: dict[str, Any] = {"command": self.command, "args": list(self.args)}
            if self.env:
                entry["env"] = dict(self.env)
            return entry
        entry = {"type": self.transport, "url": self.url}
        if self.headers:
            entry["headers"] = dict(self.headers)
        return entry


class IntentRule(models.Model):
    """Queries whose text shows ``pattern`` have intent ``name`` and get ``servers``.

    Rules are tried by ``order``; the first that matches wins. Text matched by ``exclusions`` (the
    everyday uses of a rule's words) is set aside first, so it cannot count as evidence.
    """

    name = models.CharField(max_length=64, unique=True, help_text="The intent, e.g. web or database.")
    pattern = models.TextField(
        help_text="Regular expressions (RE2 syntax: linear time, no lookaround or backreferences), "
        "one per line, matched case-insensitively anywhere in the query: the rule matches when any "
        "line does. Use \\b for whole words."
    )
    exclusions = models.TextField(
        blank=True,
        help_text="Regular expressions, one per line, for text that is not evidence of this intent "
        "(e.g. 'file' as a verb: \\bto file\\b). What they match is set aside before the pattern "
        "is tried, so evidence elsewhere in the query still counts.",
    )
    order = models.PositiveIntegerField(default=100, help_text="Rules are tried in ascending order.")
    enabled = models.BooleanField(default=True)
    servers = models.ManyToManyField(McpServer, blank=True, related_name="rules")
    description = models.TextField(blank=True)
    cache_ttl = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds to cache answers of this intent; empty uses CACHE_TTL; 0 never caches "
        "(for answers that go stale, like web pages and databases).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["order", "name"]
        indexes = [models.Index(fields=["enabled", "order"], name="intentrule_enabled_order_idx")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        for field, compile_field in (("pattern", compile_pattern), ("exclusions", compile_exclusions)):
            try:
                compile_field(getattr(self, field))
            except PatternError as exc:
                errors[field] = str(exc)
        if errors:
            raise ValidationError(errors)
