"""Extension objects, created once here and bound to an app in `init_app`."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask_jwt_extended import JWTManager
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits.storage.memory import MemoryStorage

jwt = JWTManager()

# Storage is chosen in init_app: Redis when REDIS_URL is set (shared by every worker and
# host), memory otherwise; if Redis fails mid-run the limiter falls back to memory.
limiter = Limiter(key_func=get_remote_address, default_limits=[], headers_enabled=True)


class LazyMemoryStorage(MemoryStorage):
    """limits' in-memory storage, sweeping expired keys at most once a second, inline.

    The original starts a 10 ms `threading.Timer` whenever the previous one has run — under
    load, on nearly every hit — and the request waits for the new thread to start (its cost
    is measured in bench/README.md). Expired counters are ignored when read
    anyway; the sweep only frees memory, so once a second is plenty. (`lazymemory://`.)
    """

    STORAGE_SCHEME = ["lazymemory"]
    SWEEP_INTERVAL = 1.0

    def __init__(self, uri: str | None = None, **options: Any) -> None:
        super().__init__(uri, **options)
        self._next_sweep = 0.0
        self._sweep_lock = threading.Lock()

    def _MemoryStorage__schedule_expiry(self) -> None:  # replaces the timer thread
        now = time.monotonic()
        if now < self._next_sweep or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._next_sweep = now + self.SWEEP_INTERVAL
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]
        finally:
            self._sweep_lock.release()


def init_app(app: Any) -> None:
    """Bind the extensions. Nothing here opens a network connection."""
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config.get("REDIS_URL") or "lazymemory://")
    app.config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    app.config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    app.config.setdefault(
        "RATELIMIT_STORAGE_OPTIONS", {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
    )
    jwt.init_app(app)
    # Registered before the limiter's own hook, so it runs after it (Flask runs after_request
    # hooks in reverse): the limiter adds Retry-After to every response, but it only means
    # something on a 429.
    app.after_request(_retry_after_only_when_meaningful)
    limiter.init_app(app)


def _retry_after_only_when_meaningful(response: Any) -> Any:
    if response.status_code not in (423, 429, 503):
        response.headers.pop("Retry-After", None)
    return response
