import json
import shlex
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from routing.corpus import CorpusError, CorpusReport, corpus_evaluate, corpus_read
from routing.services import RouteExplanation, route_preview


class Command(BaseCommand):
    help = (
        "Show how a query would be routed: its intent, the rule line that matched and why, MCP servers "
        "and the CLI argv (secrets masked). With --corpus FILE, route a labelled corpus (.jsonl or "
        ".csv with query and intent) and print the accuracy and the confusion table."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("query", nargs="?", help="The query text, as a client would send it.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")
        parser.add_argument(
            "--corpus", type=Path, help="A labelled corpus: JSON Lines or CSV with query and intent."
        )
        parser.add_argument(
            "--min-accuracy",
            type=float,
            help="With --corpus: fail (exit 1) when fewer than this percentage route as labelled.",
        )

    def handle(
        self,
        *args: object,
        query: str | None = None,
        json: bool = False,
        corpus: Path | None = None,
        min_accuracy: float | None = None,
        **options: object,
    ) -> None:
        if corpus is not None:
            if query is not None:
                raise CommandError("Give either a query or --corpus FILE, not both.")
            self.handle_corpus(corpus, min_accuracy=min_accuracy)
        elif query is None:
            raise CommandError("Give a query to route, or --corpus FILE.")
        else:
            self.handle_query(query, as_json=json)

    def handle_query(self, query: str, *, as_json: bool) -> None:
        preview = route_preview(query=query)
        route = preview.route
        deciding = preview.explanation.deciding
        if as_json:
            self.stdout.write(
                _json.dumps(
                    {
                        "intent": route.intent,
                        "servers": route.server_names,
                        "cacheTtl": route.cache_ttl,
                        "workdir": preview.workdir,
                        "argv": preview.argv,
                        "matched": (
                            {
                                "rule": deciding.intent,
                                "pattern": deciding.matched.pattern,
                                "text": deciding.matched.text,
                            }
                            if deciding is not None and deciding.matched is not None
                            else None
                        ),
                    }
                )
            )
            return
        self.stdout.write(f"intent:  {route.intent}")
        for line in _why(preview.explanation):
            self.stdout.write(line)
        self.stdout.write(f"servers: {', '.join(route.server_names) or '(none)'}")
        ttl = (
            "default"
            if route.cache_ttl is None
            else ("never cached" if route.cache_ttl == 0 else route.cache_ttl)
        )
        self.stdout.write(f"cache:   {ttl}")
        self.stdout.write(f"cwd:     {preview.workdir}")
        self.stdout.write(f"argv:    {shlex.join(preview.argv)}")

    def handle_corpus(self, path: Path, *, min_accuracy: float | None) -> None:
        try:
            items = corpus_read(path)
        except CorpusError as exc:
            raise CommandError(str(exc)) from None
        if not settings.MCP_ENABLED:
            self.stderr.write("MCP_ENABLED is false: every query routes to general.")
        report = corpus_evaluate(items=items)
        for line in corpus_lines(report, path):
            self.stdout.write(line)
        if min_accuracy is not None and report.accuracy * 100 < min_accuracy:
            raise CommandError(f"Accuracy {report.accuracy:.1%} is below --min-accuracy {min_accuracy:g}%.")


def _why(explanation: RouteExplanation) -> list[str]:
    lines = []
    for check in explanation.checks:
        if check.matched is not None:
            lines.append(f"rule:    {check.intent} (order {check.order}) matched {check.matched.text!r}")
            lines.append(f"         by the line {check.matched.pattern}")
        elif check.vetoed is not None:
            lines.append(
                f"vetoed:  {check.intent} (order {check.order}): {check.vetoed.text!r} counts only "
                "with text its exclusions set aside"
            )
        for excluded in check.excluded:
            lines.append(f"         exclusion {excluded.pattern} set aside {excluded.text!r}")
    if explanation.deciding is None:
        lines.append("rule:    none matched")
    if not explanation.mcp_enabled:
        lines.append("         (MCP_ENABLED is false: every query routes to general)")
    return lines


def corpus_lines(report: CorpusReport, path: Path) -> list[str]:
    """The report as operators read it: totals, the confusion table, then each query routed otherwise."""
    lines = [
        f"corpus:    {path} ({report.total} queries)",
        f"accuracy:  {report.accuracy:.1%} ({report.correct}/{report.total} routed as labelled)",
        f"general queries routed to another intent: {len(report.general_to_server)}",
        "",
        "confusion (rows: labelled, columns: routed):",
    ]
    intents = report.intents
    width = max(len(name) for name in [*intents, "labelled"]) + 2
    lines.append("labelled".ljust(width) + "".join(name.rjust(width) for name in intents))
    for labelled in intents:
        counts = [report.confusion[(labelled, routed)] for routed in intents]
        lines.append(labelled.ljust(width) + "".join(str(count).rjust(width) for count in counts))
    if report.misses:
        lines += ["", "routed otherwise:"]
        lines += [f"  {miss.labelled} -> {miss.routed}: {miss.query!r}" for miss in report.misses]
    return lines


_json = json
