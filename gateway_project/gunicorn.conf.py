"""gunicorn settings, from the environment (PORT, WEB_CONCURRENCY; WEB_THREADS is read by core.asgi).

The application is gateway_project.asgi under uvicorn workers: async views (event streams,
``?wait=``) wait on the event loop, everything else runs on WEB_THREADS threads per worker.
"""

import multiprocessing
import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '3000')}"
wsgi_app = "gateway_project.asgi:application"
worker_class = "core.gunicorn_worker.GatewayUvicornWorker"  # uvicorn, with JSON refusals
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, multiprocessing.cpu_count())))
timeout = 30
graceful_timeout = 20
keepalive = 5
# The server's ceilings (request line 8190 bytes, a header field 8190, 100 fields) are core.asgi's,
# above the gateway's URL_MAX_CHARS and HEADERS_MAX_BYTES so that most refusals come from Django
# with a precise message; both answer in the API's JSON shape.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
logger_class = "core.gunicorn_worker.GatewayLogger"
errorlog = "-"

# Metrics: each worker writes django-prometheus's counts to files in this directory and any worker's
# /metrics sums them all (core.multiprocess). It must be set before a worker imports
# prometheus_client, and belong to this server alone: the server empties it when it starts.
_project_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_metrics_dir = None
if os.environ.get("METRICS_ENABLED", "true").strip().lower() not in ("0", "false", "no", "off"):
    _metrics_dir = os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR",
        os.path.join(
            os.environ.get("GATEWAY_VAR_DIR") or os.path.join(_project_dir, "var"),
            f"prometheus-{os.environ.get('PORT', '3000')}",
        ),
    )


def on_starting(server):
    if _metrics_dir:
        from core import multiprocess

        multiprocess.prepare(_metrics_dir)


def child_exit(server, worker):
    # The worker has been reaped: fold its counts into the archive so scrapes read few files.
    if _metrics_dir:
        from core import multiprocess

        multiprocess.process_exited(worker.pid, _metrics_dir)


def post_worker_init(worker):
    # Load the URLconf and the Redis client now rather than in the first request this worker serves:
    # a fresh worker's first request (a scrape, often) would otherwise wait ~100 ms for imports.
    from django.urls import get_resolver

    from core.redis import redis_client

    get_resolver().url_patterns  # noqa: B018
    redis_client()

    # What start-up loaded lives as long as the worker: keep it out of the cyclic collector's full
    # passes, which otherwise walk every module and URL pattern again and stall all of the worker's
    # threads for milliseconds, visible as the cache hit's p99.
    import gc

    gc.collect()
    gc.freeze()

    from django.apps import apps

    if apps.is_installed("queries"):  # not in bench/bare_app.py, which shares these settings
        from queries.services import journal

        journal.recorder_start()


def worker_exit(server, worker):
    # Write what this worker's recorder holds before the process ends (what it cannot is claimed later).
    from django.apps import apps

    if apps.is_installed("queries"):
        from queries.services import journal

        journal.recorder_stop()


# Logs: the application's shape (JSON lines, or LOG_FORMAT=text) for gunicorn's own lines too.
def _logconfig():
    from core.logs import gunicorn_logconfig

    return gunicorn_logconfig(
        level=(os.environ.get("LOG_LEVEL") or "INFO").upper(),
        fmt="text" if os.environ.get("LOG_FORMAT", "").strip().lower() == "text" else "json",
        access=bool(accesslog),
    )


logconfig_dict = _logconfig()
