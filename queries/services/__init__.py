"""The query pipeline, one module per concern; everything public is re-exported here.

- ``cache``: what identifies an answer (normalization, the hash) and the ``claude:{hash}`` entries.
- ``journal``: cache hits answered and recorded in one Redis round trip, written to the database in
  batches.
- ``dedup``: the ``dedup:{hash}`` in-flight marks.
- ``events``: a job's live events, one Redis stream per job (``job:{id}:events``).
- ``run``: a worker running a job, and what follows an outcome.
- ``submit``: a submission answered from the cache, joined to a job in flight, or queued.
- ``sessions``: conversations: which session a turn continues, restoring and keeping session files.
- ``operations``: operators' cancel and retry, and reconciling the jobs with Redis (also run by the
  workers themselves).
- ``keys``: API keys.
- ``stats``: the dashboard's and ``gateway_stats``' figures.
- ``breaker``: the upstream circuit breaker, shared by every host through Redis.
- ``workers``: which queue workers are alive (a recent heartbeat, not only a registration).

Redis holds only what can be rebuilt or may expire (cache entries, in-flight marks, queue entries);
the database is the record of every submission and every execution.
"""

from queries.services.breaker import breaker_status
from queries.services.cache import (
    CACHE_KEY,
    cache_entry_purge,
    cache_figures,
    cache_get,
    cache_hash_check,
    cache_job_deleted,
    cache_purge,
    cache_purge_all,
    cache_put,
    normalize_query,
    query_hash,
)
from queries.services.dedup import DEDUP_KEY, dedup_release
from queries.services.events import (
    EVENTS_KEY,
    aevents_read,
    events_append,
    events_read,
    job_events,
    job_final_event,
    replay,
)
from queries.services.keys import api_key_create, api_key_revoke
from queries.services.operations import (
    RECONCILE_LOCK_TIMEOUT,
    OperationRefused,
    Reconciliation,
    Retry,
    job_cancel,
    job_put_back,
    job_reconcile_stale,
    job_retry,
    job_run_again,
    jobs_reconcile,
    jobs_requeue_lost,
    jobs_retry_failed,
)
from queries.services.run import (
    CANCEL_KEY,
    job_cancel_requested,
    job_enqueue,
    job_fail,
    job_finished,
    job_orphans_fail,
    job_run,
    job_worker_lost,
    request_recorded,
)
from queries.services.stats import dashboard_figures, request_figures
from queries.services.submit import (
    NeedsThread,
    Submission,
    job_get_for_caller,
    query_cache_answer,
    query_cache_answer_on_loop,
    query_submit,
)
from queries.services.workers import LiveWorker, workers_alive

__all__ = [
    "CACHE_KEY",
    "CANCEL_KEY",
    "DEDUP_KEY",
    "EVENTS_KEY",
    "LiveWorker",
    "OperationRefused",
    "RECONCILE_LOCK_TIMEOUT",
    "Reconciliation",
    "Retry",
    "Submission",
    "aevents_read",
    "api_key_create",
    "api_key_revoke",
    "breaker_status",
    "cache_entry_purge",
    "cache_figures",
    "cache_get",
    "cache_hash_check",
    "cache_job_deleted",
    "cache_purge",
    "cache_purge_all",
    "cache_put",
    "dashboard_figures",
    "dedup_release",
    "events_append",
    "events_read",
    "job_cancel",
    "job_cancel_requested",
    "job_enqueue",
    "job_events",
    "job_fail",
    "job_final_event",
    "job_finished",
    "job_get_for_caller",
    "job_orphans_fail",
    "job_put_back",
    "job_reconcile_stale",
    "job_retry",
    "job_run",
    "job_run_again",
    "job_worker_lost",
    "jobs_reconcile",
    "jobs_requeue_lost",
    "jobs_retry_failed",
    "normalize_query",
    "query_cache_answer",
    "query_cache_answer_on_loop",
    "NeedsThread",
    "query_hash",
    "query_submit",
    "request_figures",
    "replay",
    "request_recorded",
    "workers_alive",
]
