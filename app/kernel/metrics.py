"""Prometheus metrics, defined once; modules increment them, /metrics exposes them.

Under gunicorn every worker is a process: with PROMETHEUS_MULTIPROC_DIR set (the gunicorn
config sets it) prometheus_client writes each process's values to files there and the
/metrics endpoint sums them, so a scrape sees the whole server, not one worker.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests by route and status", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency by route",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RATE_LIMITED = Counter("rate_limit_rejections_total", "Requests refused with 429", ["route"])
LICENSE_ACTIVATIONS = Counter(
    "license_activations_total", "License activations by result", ["result"]
)
LICENSE_VALIDATIONS = Counter("license_validations_total", "License validations by code", ["code"])
DB_POOL_CHECKED_OUT = Gauge(
    "db_pool_checked_out_connections",
    "Database connections in use",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge("db_pool_size", "Configured database pool size", multiprocess_mode="livemax")
WEBHOOK_DELIVERIES = Counter(
    "webhook_deliveries_total",
    "Webhook delivery attempts by result (succeeded, retrying, failed, gone)",
    ["result"],
)
WEBHOOK_BACKLOG_AGE = Gauge(
    "webhook_backlog_age_seconds",
    "Age of the oldest pending webhook delivery, as the delivery worker last saw it",
    multiprocess_mode="max",
)
# Each worker's own (a pid label per worker): the verified license-token cache's fill, which
# grows a worker's memory up to its bound (auth.licensing.signing.KeySet).
LICENSE_TOKEN_CACHE_ENTRIES = Gauge(
    "license_token_cache_entries",
    "Verified license tokens this worker remembers",
    multiprocess_mode="liveall",
)
LICENSE_TOKEN_CACHE_BYTES = Gauge(
    "license_token_cache_bytes",
    "Memory the verified license-token cache of this worker holds (entries and table)",
    multiprocess_mode="liveall",
)
SQLITE_MEMORY_BYTES = Gauge(
    "sqlite_memory_bytes",
    "Memory SQLite's allocator holds in this worker (its page caches mostly)",
    multiprocess_mode="liveall",
)
