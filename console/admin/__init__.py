"""Every admin page, one module per subject; importing this package registers them all.

Job and request tables grow without bound, so their changelists never count the whole table
(common.CappedCountPaginator), filter on indexed columns, and search by the kind of term typed (an
id, a hash, or words) instead of OR-ing every field into one sequential scan.
"""

from console.admin import api_keys, intents, jobs, query_requests, sessions, webhook_deliveries

__all__ = ["api_keys", "intents", "jobs", "query_requests", "sessions", "webhook_deliveries"]
