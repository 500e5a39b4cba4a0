"""System checks for configuration that must hold at start-up."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.compatibility)
def check_claude_workdir(app_configs: object, **kwargs: object) -> list[Error]:
    workdir = Path(settings.CLAUDE_WORKDIR).resolve()
    project = Path(settings.BASE_DIR).resolve()
    if workdir == Path("/"):
        return [Error("CLAUDE_WORKDIR must not be /.", id="gateway.E001")]
    if workdir == project or project in workdir.parents:
        return [
            Error(
                "CLAUDE_WORKDIR must not be the project directory or inside it: the CLI puts its working "
                "directory in the prompt and reads CLAUDE.md files there and above.",
                hint="Point CLAUDE_WORKDIR at a dedicated directory.",
                id="gateway.E001",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def check_auth_required(app_configs: object, **kwargs: object) -> list[Warning]:
    if not settings.GATEWAY_REQUIRE_AUTH:
        return [
            Warning(
                "GATEWAY_REQUIRE_AUTH is off: anyone who can reach the API can spend money through it.",
                id="gateway.W001",
            )
        ]
    return []


@register("gateway")
def check_static_files_collected(app_configs: object, **kwargs: object) -> list[Warning]:
    # Not tagged "staticfiles": collectstatic runs those checks first and would warn about itself.
    from core.staticfiles import manifest_missing

    if manifest_missing():
        return [
            Warning(
                f"Static files have not been collected into STATIC_ROOT ({settings.STATIC_ROOT}): the "
                "admin's and the API docs' files are served from the apps, uncompressed and without "
                "long-lived caching.",
                hint="Run `manage.py collectstatic --noinput` (scripts/serve and the Docker image do).",
                id="gateway.W002",
            )
        ]
    return []
