"""Rate-limit counters in Redis, one round trip per limit of a request (issue 17).

With limits' own `RedisStorage`, a request with limits costs Redis a round trip per limit
for the hit (`incr`), and two more for its headers: flask-limiter reads the window of the
limit it reports (`X-RateLimit-Remaining`, `X-RateLimit-Reset`, `Retry-After`) with a
`GET` and a `TTL` right after the hits. `CountedRedisStorage` answers the hit with the
counter *and* its TTL in the same script, and keeps both for the rest of the request, so
the headers need no further trip: a validation goes from four round trips to two.

What a request remembers lives in its WSGI environ, so it is read only by the request
that made the hit: a counter read outside a request, or of a key this request did not
hit, goes to Redis as before. The values are the ones a `GET` and a `TTL` sent just after
the hit would return (the same `TTL`, rounded by Redis to whole seconds), so headers,
429s and `Retry-After` are unchanged; only a hit by a concurrent request between the two
can no longer slip into this request's `X-RateLimit-Remaining`.

Registered for limits' own Redis schemes (`redis://`, `rediss://`, `redis+unix://`), the
public extension point of limits' storage registry: defining the subclass replaces limits'
class for those schemes, so `RATELIMIT_STORAGE_URI` stays the Redis URL.
"""

from __future__ import annotations

import time
from typing import Any

from flask import has_request_context, request
from limits.storage.redis import RedisStorage

# INCRBY with the expiry set on the window's first hit (limits' incr_expire.lua), then the
# counter's TTL read in the same script.
_HIT_SCRIPT = """
local amount = tonumber(ARGV[2])
local current = redis.call("incrby", KEYS[1], amount)
if tonumber(current) == amount then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("ttl", KEYS[1])}
"""

_ENVIRON_KEY = "app.rate_limit_hits"


class CountedRedisStorage(RedisStorage):
    """limits' Redis storage whose hit also returns the counter's TTL, remembered with the
    count for the headers of the same request."""

    STORAGE_SCHEME = ["redis", "rediss", "redis+unix"]

    def initialize_storage(self, uri: str) -> None:
        super().initialize_storage(uri)
        self.lua_hit = self.get_connection().register_script(_HIT_SCRIPT)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        count, ttl = self.lua_hit([self.prefixed_key(key)], [expiry, amount])
        hits = _request_hits()
        if hits is not None:
            hits[key] = (int(count), int(ttl))
        return int(count)

    def get(self, key: str) -> int:
        hit = _request_hit(key)
        return hit[0] if hit is not None else super().get(key)

    def get_expiry(self, key: str) -> float:
        hit = _request_hit(key)
        if hit is None:
            return super().get_expiry(key)
        return max(hit[1], 0) + time.time()  # what RedisStorage.get_expiry makes of a TTL

    def clear(self, key: str) -> None:
        hits = _request_hits()
        if hits is not None:
            hits.pop(key, None)
        super().clear(key)

    def reset(self) -> int | None:
        hits = _request_hits()
        if hits is not None:
            hits.clear()
        return super().reset()


def _request_hits() -> dict[str, tuple[int, int]] | None:
    """The current request's remembered hits (key → count, TTL); None outside a request."""
    if not has_request_context():
        return None
    hits: Any = request.environ.setdefault(_ENVIRON_KEY, {})
    return hits


def _request_hit(key: str) -> tuple[int, int] | None:
    if not has_request_context():
        return None
    hits = request.environ.get(_ENVIRON_KEY)
    return hits.get(key) if hits else None
