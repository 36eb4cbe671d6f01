"""What the gunicorn master checks once, before it forks any worker (deploy/gunicorn.conf.py).

It builds the app exactly as a worker would (configuration, signing keys, payment provider)
and runs the readiness checks. In production a broken deployment — unsafe settings, an
unreadable signing key, migrations behind head, tables not where DB_SCHEMAS says, an
instance folder it cannot write, a database that answers but will not show its migration
state (the login role may not read alembic's version table) — stops the master at once
with the one-line message the CLI prints (exit code 2), before the port is bound or a worker
boots. Elsewhere each problem is one log line and the service starts. A database that is
down right now is not a broken deployment: /readyz reports it and the app recovers when it
returns.
"""

from __future__ import annotations

import logging

log = logging.getLogger("app.startup")

# Readiness checks whose failure means the deployment itself is wrong (not an outage).
DEPLOYMENT_CHECKS = ("instance", "signing_keys", "migrations", "layout")


def preflight() -> str | None:
    """The message to exit with (one line), or None when the service may start."""
    from app import create_app
    from app.auth.api import SigningKeyError
    from app.config import ConfigError
    from app.kernel.engines import sqlite_version_warning
    from app.operations import health
    from app.settings import settings_of

    try:
        app = create_app()
    except (ConfigError, SigningKeyError) as exc:
        return str(exc)
    try:
        with app.app_context():
            checks = health.readiness_checks(redis=False)
    finally:
        app.extensions["db"].dispose()  # no connection is inherited by the workers
    settings = settings_of(app)
    if settings.production and not settings.redis.url:
        log.warning(
            "REDIS_URL is not set: rate limits are counted per worker and start again whenever "
            "a worker restarts; set REDIS_URL in production"
        )
    for url in settings.database_urls().values():
        warning = sqlite_version_warning(url)
        if warning:
            log.warning("%s", warning)
            break
    broken = {
        name: state
        for name, state in checks.items()
        if name.rsplit("_", 1)[-1] in DEPLOYMENT_CHECKS or name in DEPLOYMENT_CHECKS
        if state not in ("ok", "skipped")
    }
    if not broken:
        return None
    summary = "; ".join(f"{name}: {state}" for name, state in broken.items())
    if settings.production:
        return f"refusing to serve with APP_ENV=production: {summary}"
    log.warning("not ready to serve everything: %s", summary)
    return None
