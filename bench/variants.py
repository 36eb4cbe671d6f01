"""The WSGI app with Prometheus metrics switched off — only to measure what they cost.

    gunicorn -c deploy/gunicorn.conf.py bench.variants:app

The service has no setting that turns metrics off (they are meant to stay on), so the
benchmark replaces the metric objects the code increments with ones that do nothing,
before the app is built. Everything else (logs, rate limits, the ownership guard unless
OWNERSHIP_GUARD=off) is the production app of `wsgi.py`.
"""

from __future__ import annotations

from typing import Any

from app.kernel import metrics


class _NoMetric:
    def labels(self, *_args: Any, **_kwargs: Any) -> _NoMetric:
        return self

    def inc(self, *_args: Any) -> None:
        pass

    def observe(self, *_args: Any) -> None:
        pass

    def set(self, *_args: Any) -> None:
        pass


for _name in dir(metrics):
    if _name.isupper():
        setattr(metrics, _name, _NoMetric())

from wsgi import app  # noqa: E402 - after the metrics are replaced

__all__ = ["app"]
