"""``manage.py check_claude``: is the Claude CLI installed, and does it answer?"""

from __future__ import annotations

import os
from dataclasses import replace

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from redis.exceptions import RedisError

from claude_cli.invocation import ClaudeInvocation
from claude_cli.runner import run_claude
from core import cli_tools, humanize
from core.health import cli_version
from queries.pool import runner_config
from queries.services import breaker_status

PROMPT = "Reply with the single word: ok"


class Command(BaseCommand):
    help = (
        "Check the Claude CLI as workers run it: CLAUDE_BIN is found (on PATH, else the pinned one in "
        "node_tools/), reports its version, names the endpoint and account it will use (keys masked), "
        "and answers a real one-line prompt (one small upstream request). On failure, exits non-zero "
        "with the reason, e.g. the CLI's own 'Not logged in' when it has no credentials, or upstream_auth "
        "when the upstream refuses them. Also shows the upstream circuit breaker's state."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--prompt", default=PROMPT, help=f"The prompt to send (default {PROMPT!r}).")
        parser.add_argument(
            "--timeout", type=float, default=60.0, help="Seconds before the CLI is stopped (default 60)."
        )

    def handle(self, *args: object, prompt: str, timeout: float, **options: object) -> None:
        path, version = cli_version()
        if path is None:
            raise CommandError(
                f"The Claude CLI {settings.CLAUDE_BIN!r} (CLAUDE_BIN) was not found on PATH or in "
                "node_tools/ (scripts/bootstrap installs the pinned one)."
            )
        origin = cli_tools.claude_bin_origin(path, setting=settings.CLAUDE_BIN)
        self.stdout.write(f"binary:   {path} ({origin})")
        if version is None:
            raise CommandError(f"{path} did not report a version (`{path} --version` failed).")
        self.stdout.write(f"version:  {version}")
        base = runner_config()
        endpoint, account = cli_tools.claude_account(base.env if base.env is not None else os.environ)
        self.stdout.write(f"endpoint: {endpoint}")
        self.stdout.write(f"account:  {account}")
        self.stdout.write(f"breaker:  {_breaker_line()}")

        config = replace(base, binary=path, timeout=timeout)
        outcome = run_claude(ClaudeInvocation(prompt=prompt), config)
        if not outcome.ok:
            raise CommandError(f"The CLI did not answer ({outcome.error_type}): {outcome.error_message}")
        data = outcome.data or {}
        self.stdout.write(f"answer:   {str(data.get('result', '')).strip()[:200]}")
        cost = data.get("total_cost_usd")
        self.stdout.write(
            f"took {humanize.duration(outcome.duration)}"
            + (f", cost {humanize.usd(cost)}" if isinstance(cost, int | float) else "")
        )
        self.stdout.write("Claude CLI OK")


def _breaker_line() -> str:
    """The upstream circuit breaker as one line: closed, or each kind it is open for and why."""
    try:
        status = breaker_status()
    except RedisError as exc:
        return f"unknown (Redis is unavailable: {exc})"
    if status["state"] == "closed":
        return "closed"
    kinds = "; ".join(
        f"{kind} {k['state']}"
        + (f" for {k['retryAfter']} s" if k["retryAfter"] else "")
        + f": {k['message']}"
        for kind, k in status["kinds"].items()
    )
    return f"{status['state']} ({kinds})"
