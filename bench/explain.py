"""The query plans behind the scale figures: the statements the service itself runs.

    python -m bench.explain      (DATABASE_URL: a seeded database)

Calls the service's own functions (admin statistics, audit search, the validation
look-up), captures the SQL they send, and prints each statement's plan as JSON.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, select

from app import create_app
from app.admin import service as admin_service
from app.admin.models import AuditLog
from app.auth.licensing import service as licensing
from app.auth.models import License
from app.kernel.db import get_database, get_session
from app.kernel.ownership import OPERATOR, acting_as


def captured(engine: Any, call: Any) -> list[tuple[str, Any]]:
    statements: list[tuple[str, Any]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if not statement.startswith(("BEGIN", "SELECT 1")):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return statements


def plan(engine: Any, statement: str, parameters: Any) -> list[str]:
    with acting_as(OPERATOR), engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            return [row[-1] for row in rows]
        rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters)
        return [row[0] for row in rows]


def main() -> None:
    app = create_app()
    with app.app_context():
        engine = get_database().engine
        session = get_session()
        with acting_as("admin"):
            some_user = session.scalar(
                select(AuditLog.user_id).order_by(AuditLog.timestamp.desc()).limit(1)
            )
        with acting_as("auth"):
            some_license = session.scalar(select(License.license_id).limit(1))
        since = datetime(2026, 1, 1, tzinfo=UTC)
        calls = {
            "validate": ("auth", lambda: licensing.license_for_validation(session, some_license)),
            "stats_users": ("admin", lambda: admin_service.user_stats(session)),
            "stats_licenses": ("admin", lambda: admin_service.license_stats(session)),
            "audit_first_page": (
                "admin",
                lambda: admin_service.search_audit(
                    session, admin_service.AuditFilter(), limit=20, after=None
                ),
            ),
            "audit_by_user": (
                "admin",
                lambda: admin_service.search_audit(
                    session, admin_service.AuditFilter(user_id=some_user), limit=20, after=None
                ),
            ),
            "audit_by_action_since": (
                "admin",
                lambda: admin_service.search_audit(
                    session,
                    admin_service.AuditFilter(action="LICENSE_STATUS_CHANGED", since=since),
                    limit=20,
                    after=None,
                ),
            ),
        }
        out = {}
        for name, (module, call) in calls.items():
            with acting_as(module):
                statements = captured(engine, call)
            out[name] = [
                {"sql": " ".join(sql.split()), "plan": plan(engine, sql, params)}
                for sql, params in statements
            ]
        session.close()
        get_database().dispose()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
