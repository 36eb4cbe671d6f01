"""The in-memory rate-limit storage: fixed windows that count and expire like limits' own,
without starting a timer thread on every hit (the cost bench/README.md measured), built
on limits' public `Storage` interface. Time is an injected clock: no test waits."""

from __future__ import annotations

import threading

from limits import parse
from limits.strategies import FixedWindowRateLimiter

from app.http.limits import CounterStorage


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_counts_expire_and_no_thread_is_started_per_hit(monkeypatch):
    clock = Clock()
    storage = CounterStorage("lazymemory://", clock=clock)
    started = []
    real_start = threading.Thread.start
    monkeypatch.setattr(
        threading.Thread, "start", lambda self: started.append(self) or real_start(self)
    )
    for _ in range(500):
        storage.incr("k", expiry=1)
    assert storage.get("k") == 500
    assert storage.get_expiry("k") == clock.now + 1
    assert started == []  # limits' MemoryStorage starts a timer on most of these hits
    clock.now += 1
    assert storage.get("k") == 0  # expired on read
    storage.incr("other", expiry=60)  # a hit after the sweep interval sweeps expired keys
    assert "k" not in storage.counts and "k" not in storage.expirations
    assert storage.incr("k", expiry=1) == 1  # a new window


def test_limits_strategy_allows_then_refuses_then_allows_again():
    clock = Clock()
    storage = CounterStorage("lazymemory://", clock=clock)
    limiter = FixedWindowRateLimiter(storage)
    limit = parse("3/minute")
    assert [limiter.hit(limit, "ip", "1.2.3.4") for _ in range(4)] == [True, True, True, False]
    assert limiter.hit(limit, "ip", "5.6.7.8")  # another key has its own window
    stats = limiter.get_window_stats(limit, "ip", "1.2.3.4")
    assert stats.remaining == 0 and stats.reset_time == clock.now + 60
    clock.now += 60
    assert limiter.hit(limit, "ip", "1.2.3.4")
    storage.clear(limiter_key := limit.key_for("ip", "1.2.3.4"))
    assert storage.get(limiter_key) == 0
    assert limiter.hit(limit, "ip", "5.6.7.8")
    storage.reset()
    assert storage.get(limit.key_for("ip", "5.6.7.8")) == 0


def test_the_app_uses_it_without_redis(app_config):
    from app import create_app
    from app.http.limits import limiter

    application = create_app({**app_config, "RATELIMIT_ENABLED": True})
    assert application.config["RATELIMIT_STORAGE_URI"] == "lazymemory://"
    application.test_client().post("/api/v1/licenses/validate", json={"token": "x"})
    assert isinstance(limiter.storage, CounterStorage)
    application.extensions["db"].dispose()
