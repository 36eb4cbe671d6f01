"""The prototyped optimisations, as patches applied from outside app/ (bench/variants.py
selects them with BENCH_VARIANT). Each is the smallest change to the service that shows
the gain; bench/README.md's recommendations say how to make it properly in app/.
`BEFORE` patches run before the app is built (the routes import what they patch), `AFTER`
ones get the built app. Prototypes since made in app/ are gone from here (autocommit-read,
revocation-prebuilt, sandbox-ledger-tail, queued-writers, redis-limits-one-trip:
bench/README.md, "Issue 17, data path" and "Issue 17, the remaining targets";
metrics-once and access-log-once: app/http/observability.py's `_route_metrics` and
`_log_access`). What is left measures a cost (`no-metrics`), not a change to make.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    from prometheus_client.metrics import MetricWrapperBase

    for name in dir(metrics):
        if isinstance(getattr(metrics, name), MetricWrapperBase):
            setattr(metrics, name, _NoMetric())
    metrics._gauge = lambda *_args: _NoMetric()  # the gauges made where first measured


# --- after the app is built ----------------------------------------------------------------


BEFORE: dict[str, Callable[[], None]] = {
    "no-metrics": no_metrics,
}
AFTER: dict[str, Callable[[Any], None]] = {}
# Every recommended prototype (not `no-metrics`: metrics stay).
ALL = [n for n in [*BEFORE, *AFTER] if n != "no-metrics"]
