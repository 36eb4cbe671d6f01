"""The prototyped optimisations, as patches applied from outside app/ (bench/variants.py
selects them with BENCH_VARIANT). Each is the smallest change to the service that shows
the gain; bench/README.md's recommendations say how to make it properly in app/.
`BEFORE` patches run before the app is built (the routes import what they patch), `AFTER`
ones get the built app. Prototypes since made in app/ are gone from here (autocommit-read,
revocation-prebuilt, sandbox-ledger-tail, queued-writers, redis-limits-one-trip:
bench/README.md, "Issue 17, data path" and "Issue 17, the remaining targets").
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from flask import g, request

from app.kernel import metrics

# --- before the app is built ---------------------------------------------------------------


class _NoMetric:
    def labels(self, *_args: Any, **_kwargs: Any) -> _NoMetric:
        return self

    def inc(self, *_args: Any) -> None:
        pass

    def observe(self, *_args: Any) -> None:
        pass

    def set(self, *_args: Any) -> None:
        pass


def no_metrics() -> None:
    """Metrics off (the service has no switch for it): what metrics cost in all."""
    for name in dir(metrics):
        if name.isupper():
            setattr(metrics, name, _NoMetric())


class _Children:
    """A labelled metric whose children are looked up once per label values."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child

    def __getattr__(self, name: str) -> Any:
        return getattr(self._metric, name)


def metrics_once() -> None:
    """prometheus_client's labels() validates and locks on every call: resolve each
    (method, route, status) child once."""
    for name in ("HTTP_REQUESTS", "HTTP_LATENCY", "RATE_LIMITED"):
        setattr(metrics, name, _Children(getattr(metrics, name)))
    for name in ("LICENSE_VALIDATIONS", "LICENSE_ACTIVATIONS"):
        setattr(metrics, name, _Children(getattr(metrics, name)))


def access_log_once() -> None:
    """The access log line built once: one dict, one json.dumps, handed to the handlers as
    a finished record (no Logger._log/findCaller/makeRecord, no second dict in the
    formatter). Same line, same keys in the same order."""
    from datetime import UTC, datetime

    from app.http import observability

    access_log = observability.access_log
    original_format = observability.JsonFormatter.format
    original_finish = observability._finish

    def format(self: Any, record: logging.LogRecord) -> str:
        return (
            record.msg if getattr(record, "preformatted", False) else original_format(self, record)
        )

    def finish(response: Any) -> Any:
        if not access_log.isEnabledFor(logging.INFO):
            return original_finish(response)
        now = time.time()
        duration = time.perf_counter() - g.get("started", time.perf_counter())
        rule = request.url_rule
        route = rule.rule if rule is not None else "<unmatched>"
        request_id = g.get("request_id", "-")
        status = response.status_code
        method = request.method
        response.headers["X-Request-ID"] = request_id
        metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
        metrics.HTTP_LATENCY.labels(method, route).observe(duration)
        if status == 429:
            metrics.RATE_LIMITED.labels(route).inc()
        line = json.dumps(
            {
                "ts": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
                "level": "info",
                "logger": "app.access",
                "message": f"{method} {route} {status}",
                **observability.access_fields(request_id, method, route, status, duration),
            },
            default=str,
        )
        record = logging.LogRecord("app.access", logging.INFO, __file__, 0, line, None, None)
        record.created = now
        record.preformatted = True  # type: ignore[attr-defined]
        access_log.handle(record)
        return response

    observability.JsonFormatter.format = format  # type: ignore[method-assign]
    observability._finish = finish


# --- after the app is built ----------------------------------------------------------------


BEFORE: dict[str, Callable[[], None]] = {
    "no-metrics": no_metrics,
    "metrics-once": metrics_once,
    "access-log-once": access_log_once,
}
AFTER: dict[str, Callable[[Any], None]] = {}
# Every recommended prototype (not `no-metrics`: metrics stay).
ALL = [n for n in [*BEFORE, *AFTER] if n != "no-metrics"]
