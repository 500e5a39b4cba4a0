"""The reference for the cache-hit benchmark: a bare Django view that answers from Redis.

No middleware, no DRF, no authentication, no database: it reads the same Redis key the gateway's
cache hit reads, through the same client (django-redis's connection pool), and returns it. Served
by gunicorn with the gateway's own settings (``gateway_project/gunicorn.conf.py``), it shows what
Django and gunicorn cost on their own, so the gateway's cache-hit throughput can be judged against
it on the same machine in the same run.

    REDIS_URL=redis://127.0.0.1:6379/14 BENCH_CACHE_KEY=claude:<hash> \\
        .venv/bin/gunicorn bench.bare_app:application --config gateway_project/gunicorn.conf.py
"""

from __future__ import annotations

import os

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    USE_TZ=True,
    CACHES={"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": os.environ["REDIS_URL"]}},
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from core.asgi import ThreadedWSGI  # noqa: E402
from core.redis import redis_client  # noqa: E402

_KEY = os.environ["BENCH_CACHE_KEY"]


def cache_hit(request: HttpRequest) -> HttpResponse:
    return HttpResponse(redis_client().get(_KEY), content_type="application/json")


urlpatterns = [path("api/query", cache_hit)]
# Served as the gateway is (core/asgi.py): the WSGI handler on threads under the uvicorn worker.
application = ThreadedWSGI(get_wsgi_application(), threads=int(os.environ.get("WEB_THREADS", "4")))
