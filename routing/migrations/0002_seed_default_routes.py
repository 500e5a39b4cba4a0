"""The default intents and MCP servers. Rows that already exist are left as operators made them."""

from django.db import migrations

SERVERS = {
    "fetch": {
        "command": "mcp-server-fetch",
        "args": [],
        "description": "Fetches web pages (PyPI mcp-server-fetch).",
    },
    "sqlite": {
        "command": "mcp-server-sqlite",
        # Relative to the CLI's working directory (CLAUDE_WORKDIR unless the server sets its own).
        "args": ["--db-path", "gateway-mcp.sqlite3"],
        "description": "Queries a SQLite database (PyPI mcp-server-sqlite). Point --db-path at the database.",
    },
    "filesystem": {
        "command": "mcp-server-filesystem",
        # The server serves the CLI's working directory (its MCP roots); "." names the same directory.
        "args": ["."],
        "description": "Reads files (npm @modelcontextprotocol/server-filesystem). It serves the working "
        "directory: set the workdir field to the directory to expose.",
    },
    "github": {
        "command": "mcp-server-github",
        "args": [],
        "description": "GitHub repositories (npm @modelcontextprotocol/server-github). Set "
        "GITHUB_PERSONAL_ACCESS_TOKEN in env.",
    },
}

# (intent, order, pattern, server, cache_ttl): the original gateway's words, whole words, in its order.
RULES = [
    ("web", 10, r"\b(https?|api|fetch|url|endpoint|rest|graphql)\b", "fetch", 300),
    ("database", 20, r"\b(sql|database|table|schema|select|insert|update|delete|join)\b", "sqlite", 0),
    ("filesystem", 30, r"\b(file|folder|directory|path)\b|\.(txt|json|csv|md)\b", "filesystem", None),
    ("code", 40, r"\b(function|class|implement|refactor|debug|method|variable)\b", "github", None),
    ("general", 1000, r".", None, None),
]


def seed(apps, schema_editor):
    McpServer = apps.get_model("routing", "McpServer")
    IntentRule = apps.get_model("routing", "IntentRule")
    servers = {}
    for name, fields in SERVERS.items():
        servers[name], _ = McpServer.objects.get_or_create(name=name, defaults=fields)
    for name, order, pattern, server, cache_ttl in RULES:
        rule, created = IntentRule.objects.get_or_create(
            name=name,
            defaults={
                "order": order,
                "pattern": pattern,
                "cache_ttl": cache_ttl,
                "description": "Matches nothing else: no MCP server." if name == "general" else "",
            },
        )
        if created and server:
            rule.servers.add(servers[server])


class Migration(migrations.Migration):
    dependencies = [("routing", "0001_mcp_servers_and_intent_rules")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
