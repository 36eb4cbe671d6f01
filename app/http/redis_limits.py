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

All the limits of a request in one round trip: flask-limiter hits a request's limits one
after the other (and stops at the first refused), so on its own each limit is a trip. For
plain per-route limits the limiter (`limits.RouteLimiter`) knows them all before the first
hit and hands them to `hit_all`, one script that increments the counters in that order and
stops at the first over its amount — what its own hits, one by one, would do.

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

import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from flask import has_request_context, request
from limits.storage.redis import RedisStorage
from redis import exceptions as redis_errors
from redis.commands.core import Script

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

# A hit of one limit: (key, expiry, cost), and the limit's amount (over it, the limiter
# refuses the request and hits nothing after it).
PlannedHit = tuple[str, int, int, int]


class CountedRedisStorage(RedisStorage):
    """limits' Redis storage whose hit also returns the counter's TTL, remembered with the
    count for the headers of the same request; `hit_all`: the hits of a request in one
    script."""

    STORAGE_SCHEME = ["redis", "rediss", "redis+unix"]

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
        count, ttl = self.run(self.lua_hit, [self.prefixed_key(key)], [expiry, amount])
        counts = _request_counts(create=True)
        if counts is not None:
            counts[key] = (int(count), int(ttl))
        return int(count)

    def hit_all(self, hits: Sequence[PlannedHit]) -> list[tuple[int, float]]:
        """Each hit in turn, in one script, up to and with the first whose count is over
        its limit's amount: each made hit's count and the time its window ends (what
        `get` and `get_expiry` then answer; remembered for the request)."""
        answer = self.run(
            self.lua_hits,
            [self.prefixed_key(key) for key, _, _, _ in hits],
            [arg for _, expiry, amount, most in hits for arg in (expiry, amount, most)],
        )
        now = time.time()
        made = []
        counts = _request_counts(create=True)
        for (key, _, _, _), count, ttl in zip(hits, answer[::2], answer[1::2], strict=False):
            made.append((int(count), max(int(ttl), 0) + now))  # as RedisStorage.get_expiry
            if counts is not None:
                counts[key] = (int(count), int(ttl))
        return made

    def get(self, key: str) -> int:
        hit = _request_hit(key)
        return hit[0] if hit is not None else super().get(key)

    def get_expiry(self, key: str) -> float:
        hit = _request_hit(key)
        if hit is None:
            return super().get_expiry(key)
        return max(hit[1], 0) + time.time()  # what RedisStorage.get_expiry makes of a TTL

    def clear(self, key: str) -> None:
        counts = _request_counts()
        if counts is not None:
            counts.pop(key, None)
        super().clear(key)

    def reset(self) -> int | None:
        counts = _request_counts()
        if counts is not None:
            counts.clear()
        return super().reset()


def _request_counts(create: bool = False) -> dict[str, tuple[int, int]] | None:
    """The counters the current request hit (key → count, TTL); None outside a request
    (or, unless `create`, before its first hit)."""
    if not has_request_context():
        return None
    environ = request.environ
    counts: Any = environ.get(_ENVIRON_KEY)
    if counts is None and create:
        counts = environ[_ENVIRON_KEY] = {}
    return counts


def _request_hit(key: str) -> tuple[int, int] | None:
    counts = _request_counts()
    return counts.get(key) if counts is not None else None
