from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class ConsoleConfig(AppConfig):
    """The operators' views: the admin site, its dashboard and cache pages, and every model's page."""

    name = "console"
    verbose_name = "Operators' console"


class GatewayAdminConfig(AdminConfig):
    """django.contrib.admin with the gateway's site (INSTALLED_APPS names this instead of it)."""

    default_site = "console.site.GatewayAdminSite"
