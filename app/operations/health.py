"""Operations endpoints: liveness and readiness."""

from __future__ import annotations

import logging
import os
import tempfile
from functools import cache
from typing import Any

from apiflask import APIBlueprint
from flask import current_app
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from app.http import edge
from app.kernel import migrations
from app.kernel.db import get_database
from app.kernel.errors import PROBLEM_MEDIA_TYPE, problem
from app.kernel.ownership import OPERATOR, acting_as

log = logging.getLogger(__name__)

bp = APIBlueprint("ops", __name__, tag="Operations")
LIVE = {"status": "ok"}  # the liveness answer, always: served at the edge (ADR 0017)


@bp.get("/healthz")
@bp.doc(
    summary="Liveness: the process is up",
    operation_id="operations_healthz",
    responses={200: "alive"},
)
def healthz() -> Any:
    return LIVE


@bp.get("/readyz")
@bp.doc(
    summary="Readiness: each database reachable, migrated to head, its tables where "
    "DB_SCHEMAS says; Redis when configured",
    operation_id="operations_readyz",
    responses={200: "ready", 503: "a dependency is failing"},
)
def readyz() -> Any:
    checks = readiness_checks()
    failing = {name: state for name, state in checks.items() if state not in ("ok", "skipped")}
    if failing:
        body = problem(
            503,
            "not_ready",
            "Not ready: " + ", ".join(f"{name} {state}" for name, state in failing.items()),
            checks=checks,
        )
        return current_app.response_class(
            current_app.json.dumps(body), status=503, mimetype=PROBLEM_MEDIA_TYPE
        )
    return {"status": "ready", "checks": checks}


def readiness_checks(*, redis: bool = True) -> dict[str, str]:
    """Every readiness check by name: "ok", "skipped" or what is wrong, in a few words."""
    database = get_database()
    checks = {"instance": _check_instance(), "signing_keys": _check_signing_keys()}
    checks.update(_database_checks(database.engine))
    for module, engine in database.module_engines.items():
        checks.update(_database_checks(engine, prefix=f"{module}_"))  # phase 3
    checks["redis"] = _check_redis() if redis else "skipped"
    return checks


def _writable(folder: str | os.PathLike[str]) -> bool:
    """Whether this process can create a file in `folder` (tried, not guessed from modes:
    root ignores them, a read-only mount does not)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _check_instance() -> str:
    folder = current_app.instance_path
    if not os.path.isdir(folder):
        return f"missing: {folder}"
    return "ok" if _writable(folder) else f"read-only: {folder}"


def _check_signing_keys() -> str:
    from app.auth.api import SigningKeyError
    from app.auth.licensing.signing import license_keys

    try:
        license_keys()
    except SigningKeyError as exc:
        return str(exc)
    except OSError as exc:  # the development key cannot be written
        return f"cannot create the development signing key: {exc.strerror} ({exc.filename})"
    return "ok"


@cache
def _head_revisions() -> frozenset[str]:
    return migrations.head_revisions()


def _database_checks(engine: Any, prefix: str = "") -> dict[str, str]:
    """Reachable; migrations at head; tables where DB_SCHEMAS says (one connection).

    A database that answers but will not show its migration state (say the login role may
    not read alembic's version table) is not an outage: "migrations" names why, so a
    production start refuses rather than serve a schema it cannot vouch for.
    """
    expected = migrations.SCHEMAS if current_app.config["DB_SCHEMAS"] else migrations.FLAT
    try:
        with acting_as(OPERATOR), engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            layout = migrations.current_layout(conn)
            try:
                current: frozenset[str] | str = migrations.current_revisions(conn)
            except DBAPIError as exc:
                if _lost_connection(exc):
                    raise
                current = f"unreadable: {_first_line(exc.orig or exc)}"
    except Exception as exc:  # any failure means "not ready", reported, never raised
        log.warning("readiness: database check failed: %s", _first_line(exc))
        return {f"{prefix}database": _why_unreachable(engine)}
    if isinstance(current, str):
        log.warning("readiness: migration state %s", current)
    return {
        f"{prefix}database": "ok",
        f"{prefix}migrations": _migrations_state(current),
        f"{prefix}layout": "ok"
        if layout in (expected, migrations.EMPTY)
        else f"{layout}, expected {expected}",
    }


def _migrations_state(current: frozenset[str] | str) -> str:
    if isinstance(current, str):
        return current  # why it could not be read
    return "ok" if current == _head_revisions() else "behind"


def _lost_connection(exc: DBAPIError) -> bool:
    """The connection failed (an outage), rather than the statement being refused."""
    return exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _why_unreachable(engine: Any) -> str:
    """A SQLite file in a folder this process cannot write is not an outage: say so."""
    if engine.dialect.name == "sqlite" and engine.url.database:
        folder = os.path.dirname(os.path.abspath(engine.url.database))
        if not os.path.isdir(folder):
            return f"missing folder: {folder}"
        if not _writable(folder):
            return f"read-only: {folder} (SQLite needs to write its folder)"
    return "unreachable"


def _check_redis() -> str:
    url = current_app.config.get("REDIS_URL")
    if not url:
        return "skipped"
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            client.ping()
        finally:
            client.close()
        return "ok"
    except Exception as exc:
        log.warning("readiness: redis check failed: %s", exc)
        return "unreachable"


def init_app(app: Any) -> None:
    app.register_blueprint(bp)
    edge.serve_fixed(app, "/healthz", LIVE)
