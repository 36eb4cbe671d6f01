"""Rate-limit counters in Redis: one round trip for the limits of a request (issue 17).

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

A worker's own connection: redis-py's command path (a connection taken from the pool and
checked for unread data with a `select`, the command packed, retry and observability hooks,
the connection given back) cost ~120 µs of CPU per EVALSHA against ~35 µs for sending the
packed command and reading the answer on a connection held open (measured in-process). The
hit scripts run on a connection the storage holds, used by one request at a time (a
request that finds it busy, in a threaded server, goes through the pool as before), made
afresh after a fork; a script Redis no longer has (restarted, flushed) is loaded and run
again, and a connection Redis closed is replaced once, as redis-py's retry would.

Registered for limits' own Redis schemes (`redis://`, `rediss://`, `redis+unix://`), the
public extension point of limits' storage registry: defining the subclass replaces limits'
class for those schemes, so `RATELIMIT_STORAGE_URI` stays the Redis URL.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from flask import has_request_context, request
from limits.storage.redis import RedisStorage
from redis import exceptions as redis_errors
from redis.commands.core import Script

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
        self._held: tuple[int, Any] | None = None  # (pid, connection), made on first use
        self._held_lock = threading.Lock()

    def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """`script`'s answer, on the connection this storage holds when it is free."""
        if not self._held_lock.acquire(blocking=False):
            return script(keys=keys, args=args)  # another thread's request is using it
        try:
            return self._run_held(script, keys, args)
        finally:
            self._held_lock.release()

    def _run_held(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        pid = os.getpid()
        if self._held is None or self._held[0] != pid:  # never share a parent's socket
            pool = self.get_connection().connection_pool
            self._held = (pid, pool.connection_class(**pool.connection_kwargs))
        connection = self._held[1]
        retried = loaded = False
        while True:
            try:
                connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                return connection.read_response()
            except redis_errors.NoScriptError:
                if loaded:
                    raise
                loaded = True
                connection.send_command("SCRIPT", "LOAD", script.script)
                sha = connection.read_response()
                script.sha = sha.decode() if isinstance(sha, bytes) else sha
            except redis_errors.ConnectionError:  # Redis closed it (a restart): a new one, once
                connection.disconnect()  # (a timeout is raised: the script may have run)
                if retried:
                    raise
                retried = True

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        hits = _request_hits(create=True)
        if hits is None:
            count, _ttl = self.run(self.lua_hit, [self.prefixed_key(key)], [expiry, amount])
            return int(count)
        hit = (key, expiry, amount)
        if hits.ahead and hits.ahead[0][0] == hit:
            return hits.ahead.pop(0)[1]
        if not hits.planned and self.planner is not None:
            hits.planned = True
            plan = self.planner()
            if plan and len(plan) > 1 and plan[0][:3] == hit:
                return self._hit_all(hits, plan)
        count, ttl = self.run(self.lua_hit, [self.prefixed_key(key)], [expiry, amount])
        hits.counts[key] = (int(count), int(ttl))
        return int(count)

    def _hit_all(self, hits: _RequestHits, plan: Sequence[PlannedHit]) -> int:
        """Every planned hit in one script, up to the first refused; the first's count."""
        answer = self.run(
            self.lua_hits,
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
        try:
            connection = self.get_connection()
            for (key, _, amount), _ in ahead:
                connection.decrby(self.prefixed_key(key), amount)
        except self.base_exceptions:  # Redis gone since the hit: the window will end
            log.warning("rate-limit hits made ahead could not be given back", exc_info=True)

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
