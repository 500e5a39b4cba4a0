from django.conf import settings
from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core import health
from queries.api import QueryCreateApi
from queries.streaming import query_detail, query_stream

urlpatterns: list[URLPattern | URLResolver] = [
    path("api/query", QueryCreateApi.as_view(), name="query-create"),
    path("api/query/<str:job_id>/stream", query_stream, name="query-stream"),
    path("api/query/<str:job_id>", query_detail, name="query-detail"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("health", health.health, name="health"),
    path("ready", health.ready, name="ready"),
    path("", include("compat.urls")),
]

if settings.METRICS_ENABLED:
    from core.metrics import metrics_view

    urlpatterns.append(path("metrics", metrics_view, name="metrics"))

if settings.ADMIN_ENABLED:
    urlpatterns += [
        path("admin/rq/", include("django_rq.urls")),
        path("admin/", admin.site.urls),
    ]

handler400 = "core.errors.handler400"
handler403 = "core.errors.handler403"
handler404 = "core.errors.handler404"
handler500 = "core.errors.handler500"
