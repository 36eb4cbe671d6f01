"""The WSGI app with parts switched off or changed — only to measure what they cost.

    BENCH_VARIANT=no-metrics gunicorn -c deploy/gunicorn.conf.py bench.variants:app

- `no-metrics`: the service has no setting that turns metrics off (they are meant to stay
  on), so the metric objects the code increments are replaced with ones that do nothing,
  before the app is built.
- `recommended`: the changes bench/README.md recommends and the service has not adopted
  (yet), applied from outside so their gain can be measured before anyone makes them:
  SQLite write transactions queue on a file lock (flock) before BEGIN IMMEDIATE, so a
  waiting writer wakes the moment the lock is free instead of polling in SQLite's busy
  handler (sleeps of 1…100 ms). (The lazy expiry of the in-memory rate-limit storage and
  the absent cookie session, recommended earlier, are in the service now.)

Everything else (logs, rate limits, the ownership guard unless OWNERSHIP_GUARD=off) is
the production app of `wsgi.py`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.kernel import metrics

VARIANT = os.environ.get("BENCH_VARIANT", "")


class _NoMetric:
    def labels(self, *_args: Any, **_kwargs: Any) -> _NoMetric:
        return self

    def inc(self, *_args: Any) -> None:
        pass

    def observe(self, *_args: Any) -> None:
        pass

    def set(self, *_args: Any) -> None:
        pass


def _without_metrics() -> None:
    for name in dir(metrics):
        if name.isupper():
            setattr(metrics, name, _NoMetric())


def _queued_sqlite_writers() -> None:
    from app.kernel import db

    original = db.transaction
    locks: dict[str, int] = {}

    @contextmanager
    def transaction(session: Any) -> Iterator[Any]:
        engine = session.get_bind()
        if session.info.get(db._WRITE) or engine.dialect.name != "sqlite":
            with original(session):  # nested (a savepoint), or not SQLite
                yield session
            return
        path = f"{engine.url.database}.writers"
        if path not in locks:
            locks[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(locks[path], fcntl.LOCK_EX)
        try:
            with original(session):
                yield session
        finally:
            fcntl.flock(locks[path], fcntl.LOCK_UN)

    db.transaction = transaction


if VARIANT == "no-metrics":
    _without_metrics()
elif VARIANT == "recommended":
    _queued_sqlite_writers()  # before the routes import transaction()

from wsgi import app  # noqa: E402 - after the patches above

__all__ = ["app"]
