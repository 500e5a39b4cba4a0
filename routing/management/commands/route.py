import json
import shlex

from django.core.management.base import BaseCommand, CommandParser

from routing.services import route_preview


class Command(BaseCommand):
    help = "Show how a query would be routed: its intent, MCP servers and the CLI argv (secrets masked)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("query", help="The query text, as a client would send it.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")

    def handle(self, *args: object, query: str, json: bool = False, **options: object) -> None:
        preview = route_preview(query=query)
        route = preview.route
        if json:
            self.stdout.write(
                _json.dumps(
                    {
                        "intent": route.intent,
                        "servers": route.server_names,
                        "cacheTtl": route.cache_ttl,
                        "workdir": preview.workdir,
                        "argv": preview.argv,
                    }
                )
            )
            return
        self.stdout.write(f"intent:  {route.intent}")
        self.stdout.write(f"servers: {', '.join(route.server_names) or '(none)'}")
        ttl = (
            "default"
            if route.cache_ttl is None
            else ("never cached" if route.cache_ttl == 0 else route.cache_ttl)
        )
        self.stdout.write(f"cache:   {ttl}")
        self.stdout.write(f"cwd:     {preview.workdir}")
        self.stdout.write(f"argv:    {shlex.join(preview.argv)}")


_json = json
