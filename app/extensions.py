"""Extension objects, created once here and bound to an app in `init_app`."""

from __future__ import annotations

from typing import Any

from flask_jwt_extended import JWTManager
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

jwt = JWTManager()

# Storage is chosen in init_app: Redis when REDIS_URL is set (shared by every worker and
# host), memory otherwise; if Redis fails mid-run the limiter falls back to memory.
limiter = Limiter(key_func=get_remote_address, default_limits=[], headers_enabled=True)


def init_app(app: Any) -> None:
    """Bind the extensions. Nothing here opens a network connection."""
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config.get("REDIS_URL") or "memory://")
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
