from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Routing (intents and MCP servers)"

    def ready(self) -> None:
        from routing.services import routing_invalidation_connect

        routing_invalidation_connect()
