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


# Three validations of one token a minute (the per-address limit out of the way).
THREE_VALIDATIONS = {
    "RATELIMIT_ENABLED": True,
    "RATELIMIT_VALIDATE_PER_TOKEN": "3/minute",
    "RATELIMIT_VALIDATE_PER_IP": "1000/minute",
}


def test_redis_headers_are_those_of_the_counter_and_429_follows(app_config, redis_url):
    """With limits in Redis, each answer's rate-limit headers are what Redis holds for the
    limit just after the hit (count and TTL come back with the hit itself: one round trip
    per limit, bench/README.md), and the limit still refuses once spent."""
    import time

    import redis

    from app import create_app
    from app.http.limits import limiter
    from app.http.redis_limits import CountedRedisStorage

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("*LIMITS*"):  # no counts left by an earlier run
        client.delete(key)
    app = create_app({**app_config, **THREE_VALIDATIONS, "RATELIMIT_STORAGE_URI": redis_url})
    http = app.test_client()
    body = {"token": "not-a-token", "client_id": "laptop"}
    try:
        answers = []
        for _ in range(4):
            answers.append(http.post("/api/v1/licenses/validate", json=body))
            (key,) = [k for k in client.scan_iter("*LIMITS*") if b"tok:" in k]
            held, ttl = int(client.get(key)), client.ttl(key)
            answer = answers[-1]
            assert answer.headers["X-RateLimit-Limit"] == "3"
            assert int(answer.headers["X-RateLimit-Remaining"]) == max(0, 3 - held)
            assert 0 < ttl <= 60
            assert abs(int(answer.headers["X-RateLimit-Reset"]) - (time.time() + ttl)) <= 2
        assert isinstance(limiter.storage, CountedRedisStorage)
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert 0 < int(answers[3].headers["Retry-After"]) <= 61
        assert "Retry-After" not in answers[0].headers
        with app.app_context():  # outside a request the counter is read from Redis
            assert limiter.storage.get(key.decode().removeprefix("LIMITS:")) == 4
    finally:
        client.close()
        app.extensions["db"].dispose()
