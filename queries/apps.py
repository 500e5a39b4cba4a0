from django.apps import AppConfig


class QueriesConfig(AppConfig):
    name = "queries"

    def ready(self) -> None:
        from django.db.models.signals import post_delete

        from core import health, metrics
        from queries.models import Job
        from queries.services import breaker, cache, journal, workers

        post_delete.connect(cache.cache_job_deleted, sender=Job, dispatch_uid="queries-job-deleted")
        # /metrics shows every failure type from the start, and the journal's backlog.
        metrics.known_labels_register("claude_jobs_failed_total", Job.ErrorType.values)
        metrics.scrape_source_register(journal.BACKLOG_SCRAPE)
        # A worker counts as alive by its heartbeat's age, not by its registration alone.
        health.readiness_check_register("workers", workers.workers_readiness)
        metrics.scrape_source_register(breaker.BREAKER_SCRAPE)
        # /ready shows the upstream breaker; an open breaker is reported, not a reason to be unready
        # (cache hits and queued jobs are still served).
        health.READINESS_CHECKS["upstream"] = breaker.breaker_status
