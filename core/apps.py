from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"

    def ready(self) -> None:
        # Imported for their side effects: system checks, and the admin login-failure counters.
        from core import admin_login, checks  # noqa: F401
