from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"

    def ready(self) -> None:
        # Imported for their side effects: system checks, and the admin login-failure counters.
        from django.core.signals import request_started

        from core import admin_login, checks  # noqa: F401
        from core.db import connections_drop_broken

        # Each request starts on a connection the database has not dropped (core/db.py).
        request_started.connect(connections_drop_broken, dispatch_uid="core-drop-broken-connections")
