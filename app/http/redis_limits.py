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

Both limits of a request in one round trip: flask-limiter hits a request's limits one after
the other (and stops at the first refused), so on its own each limit is a trip. When the
limiter can tell which counters the request will hit, in which order (`planner`, set by
`limits.RouteLimiter` for plain per-route limits), the first hit runs them all in one
script that increments them in that order and stops at the first over its amount — what
the limiter's own hits would do — and the limiter's next hits are answered from it. Its
first counter must be the very hit the limiter asks for, and each later hit must be the
next one planned (key, expiry, cost), else it goes to Redis on its own; a counter
incremented ahead that the limiter never asked for is given back at the end of the
request (`settle`), so a plan that disagreed with the limiter costs a trip, not a count.

Registered for limits' own Redis schemes (`redis://`, `rediss://`, `redis+unix://`), the
public extension point of limits' storage registry: defining the subclass replaces limits'
class for those schemes, so `RATELIMIT_STORAGE_URI` stays the Redis URL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from flask import has_request_context, request
from limits.storage.redis import RedisStorage

log = logging.getLogger(__name__)

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

# The same hit for each key in turn (ARGV: expiry, amount, the limit's amount per key),
# stopping after the first counter over its limit's amount; each counter and its TTL.
_HITS_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
    local amount = tonumber(ARGV[3 * i - 1])
    local current = redis.call("incrby", key, amount)
    if tonumber(current) == amount then
        redis.call("expire", key, ARGV[3 * i - 2])
    end
    out[#out + 1] = current
    out[#out + 1] = redis.call("ttl", key)
    if current > tonumber(ARGV[3 * i]) then
        break
    end
end
return out
"""

_ENVIRON_KEY = "app.rate_limit_hits"

# A hit the limiter will ask for: (key, expiry, cost), and the limit's amount (over it, the
# limiter refuses the request and hits nothing after it).
Hit = tuple[str, int, int]
PlannedHit = tuple[str, int, int, int]


class _RequestHits:
    """What one request's hits left: each counter hit (key → count, TTL), the hits made
    ahead of the limiter's asking (in order), and whether the plan was asked for."""

    __slots__ = ("ahead", "counts", "planned")

    def __init__(self) -> None:
        self.counts: dict[str, tuple[int, int]] = {}
        self.ahead: list[tuple[Hit, int]] = []
        self.planned = False


class CountedRedisStorage(RedisStorage):
    """limits' Redis storage whose hit also returns the counter's TTL, remembered with the
    count for the headers of the same request; with a `planner`, the hits of a request
    in one script."""

    STORAGE_SCHEME = ["redis", "rediss", "redis+unix"]

    # The hits the current request's limits will make, in order (None: not known).
    planner: Callable[[], Sequence[PlannedHit] | None] | None = None

    def initialize_storage(self, uri: str) -> None:
        super().initialize_storage(uri)
        self.lua_hit = self.get_connection().register_script(_HIT_SCRIPT)
        self.lua_hits = self.get_connection().register_script(_HITS_SCRIPT)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        hits = _request_hits(create=True)
        if hits is None:
            count, _ttl = self.lua_hit([self.prefixed_key(key)], [expiry, amount])
            return int(count)
        hit = (key, expiry, amount)
        if hits.ahead and hits.ahead[0][0] == hit:
            return hits.ahead.pop(0)[1]
        if not hits.planned and self.planner is not None:
            hits.planned = True
            plan = self.planner()
            if plan and len(plan) > 1 and plan[0][:3] == hit:
                return self._hit_all(hits, plan)
        count, ttl = self.lua_hit([self.prefixed_key(key)], [expiry, amount])
        hits.counts[key] = (int(count), int(ttl))
        return int(count)

    def _hit_all(self, hits: _RequestHits, plan: Sequence[PlannedHit]) -> int:
        """Every planned hit in one script, up to the first refused; the first's count."""
        answer = self.lua_hits(
            [self.prefixed_key(key) for key, _, _, _ in plan],
            [arg for _, expiry, amount, most in plan for arg in (expiry, amount, most)],
        )
        pairs = zip(answer[::2], answer[1::2], strict=True)
        made = [(int(count), int(ttl)) for count, ttl in pairs]  # up to the first refused
        for (key, _, _, _), counted in zip(plan, made, strict=False):
            hits.counts[key] = counted
        hits.ahead = [(p[:3], count) for p, (count, _) in zip(plan[1:], made[1:], strict=False)]
        return made[0][0]

    def settle(self) -> None:
        """Give back what the request's plan hit ahead and the limiter never asked for (a
        plan that disagreed with the limiter: not expected), so that no count is off."""
        hits = _request_hits()
        if hits is None or not hits.ahead:
            return
        ahead, hits.ahead = hits.ahead, []
        log.warning("rate-limit hits made ahead and not asked for: %d given back", len(ahead))
        connection = self.get_connection()
        for (key, _, amount), _ in ahead:
            connection.decrby(self.prefixed_key(key), amount)

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
            hits.counts.pop(key, None)
        super().clear(key)

    def reset(self) -> int | None:
        hits = _request_hits()
        if hits is not None:
            hits.counts.clear()
        return super().reset()


def _request_hits(create: bool = False) -> _RequestHits | None:
    """The current request's hits; None outside a request (or, unless `create`, before
    its first hit)."""
    if not has_request_context():
        return None
    environ = request.environ
    hits: Any = environ.get(_ENVIRON_KEY)
    if hits is None and create:
        hits = environ[_ENVIRON_KEY] = _RequestHits()
    return hits


def _request_hit(key: str) -> tuple[int, int] | None:
    hits = _request_hits()
    return hits.counts.get(key) if hits is not None else None
