from django.apps import AppConfig


class CompatConfig(AppConfig):
    """The Anthropic Messages and OpenAI Chat Completions APIs under /v1/, on the queries pipeline."""

    name = "compat"
    verbose_name = "Compatible APIs"
