"""Intent detection: which MCP servers a query calls for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GENERAL_INTENT = "general"


@dataclass(frozen=True)
class Route:
    """The routing decision for one query: its intent and the MCP servers the CLI gets."""

    intent: str = GENERAL_INTENT
    # name -> the CLI's server entry ({"command", "args", "env"}); only names are ever logged or hashed.
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def server_names(self) -> list[str]:
        return sorted(self.servers)

    def mcp_config(self) -> dict[str, Any] | None:
        return {"mcpServers": self.servers} if self.servers else None

    def allowed_tools(self) -> tuple[str, ...]:
        # Allowing a whole server by its prefix lets every tool it offers run without a prompt.
        return tuple(f"mcp__{name}" for name in self.server_names)


def route_query(*, query: str) -> Route:
    """The route for a query. With no intent rules configured, every query is ``general``."""
    return Route()


def route_for_job(*, intent: str, server_names: list[str]) -> Route:
    """Rebuild the route a job was submitted with, from the names recorded on it."""
    return Route(intent=intent)
