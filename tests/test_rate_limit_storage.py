"""The in-memory rate-limit storage: counts and expires like limits' own, without starting a
timer thread on every hit (the cost bench/README.md measured)."""

from __future__ import annotations

import threading
import time

from app.extensions import LazyMemoryStorage


def test_counts_expire_and_no_thread_is_started_per_hit(monkeypatch):
    storage = LazyMemoryStorage("lazymemory://")
    started = []
    real_start = threading.Timer.start
    monkeypatch.setattr(
        threading.Timer, "start", lambda self: started.append(self) or real_start(self)
    )
    for _ in range(500):
        storage.incr("k", expiry=1)
    assert storage.get("k") == 500
    assert started == []  # the original would have started a timer on most of these hits
    time.sleep(1.05)
    assert storage.get("k") == 0  # expired on read
    storage.incr("other", expiry=60)  # a hit after the interval sweeps expired keys inline
    assert "k" not in storage.storage and "k" not in storage.expirations


def test_the_app_uses_it_without_redis(app_config):
    from app import create_app
    from app.extensions import limiter

    application = create_app({**app_config, "RATELIMIT_ENABLED": True})
    assert application.config["RATELIMIT_STORAGE_URI"] == "lazymemory://"
    application.test_client().post("/api/v1/licenses/validate", json={"token": "x"})
    assert isinstance(limiter.storage, LazyMemoryStorage)
    application.extensions["db"].dispose()
