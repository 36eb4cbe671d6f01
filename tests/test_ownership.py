"""The ownership registry and its runtime guard, on SQLite and PostgreSQL (docs/ownership.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import DDL, column, func, insert, literal, select, text, update
from sqlalchemy.schema import DropTable

from app.admin import api as admin_api
from app.admin.models import AuditLog
from app.auth.models import User
from app.kernel import events
from app.kernel.db import get_session, transaction, utcnow
from app.kernel.ids import new_id
from app.kernel.ownership import (
    OPERATOR,
    OwnershipViolation,
    Registry,
    acting_as,
    module_api,
    registry,
)
from app.models import metadata
from tests.helpers import OTHER_SECRET, STRONG_SECRET

ROOT = Path(__file__).resolve().parents[1]


def _user(email: str = "a@example.com") -> User:
    return User(user_id=new_id("usr"), email=email, password_hash="x", plan="free", role="user")


def _count(session, model) -> int:
    with acting_as(OPERATOR):
        return session.scalar(select(func.count()).select_from(model))


@contextlib.contextmanager
def _refused(module: str, match: str | None = None) -> Iterator[None]:
    """Acting as `module`, the block is refused: OwnershipViolation (matching `match`)."""
    with acting_as(module), pytest.raises(OwnershipViolation, match=match):
        yield


def test_every_table_has_exactly_one_owner():
    assert registry.check(t.name for t in metadata.sorted_tables) == []
    owners = {t.name: registry.owner_of(t.name) for t in metadata.sorted_tables}
    assert all(owners.values()), owners
    assert owners["users"] == "auth"
    assert owners["audit_logs"] == "admin"
    assert owners["event_outbox"] == owners["event_inbox"] == "kernel"


def test_registry_refuses_a_second_owner_and_unknown_reads():
    reg = Registry()
    reg.declare("a", owns={"t1"})
    with pytest.raises(ValueError, match="already owned"):
        reg.declare("b", owns={"t1"})
    reg.declare("c", owns={"t2"}, reads={"nope"})
    assert reg.check(["t1", "t2", "t3"]) == [
        "table 't3' has no owner",
        "module 'c' reads unknown table 'nope'",
    ]


def test_admin_code_may_not_write_users(app):
    with app.app_context():
        session = get_session()
        with _refused("admin", "'admin' may not write table 'users'"), transaction(session):
            session.execute(
                insert(User).values(
                    user_id=new_id("usr"),
                    email="x@example.com",
                    password_hash="x",
                    plan="free",
                    role="user",
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
        with _refused("admin"), transaction(session):
            session.execute(update(User).values(plan="pro"))
        assert _count(session, User) == 0


def test_admin_code_may_read_users(app):
    with app.app_context():
        session = get_session()
        with acting_as("admin"):
            assert session.scalar(select(func.count()).select_from(User)) == 0


def test_orders_code_may_not_read_audit_logs(app):
    with app.app_context():
        session = get_session()
        with _refused("orders", "'orders' may not read table 'audit_logs'"):
            session.execute(select(AuditLog)).all()
        # Also when the table hides in a subquery.
        inner = select(AuditLog.user_id).scalar_subquery()
        with _refused("orders", "audit_logs"):
            session.execute(select(User.user_id).where(User.user_id.in_(inner))).all()


def test_code_outside_any_module_may_not_touch_module_tables(app):
    with app.app_context():
        session = get_session()
        with pytest.raises(OwnershipViolation, match="code outside any module"):
            session.execute(select(User)).all()
        with pytest.raises(OwnershipViolation, match="raw SQL"):
            session.execute(text("SELECT 1")).scalar()
        # Statements that touch no table are fine; operations act as OPERATOR.
        assert session.execute(select(literal(1))).scalar() == 1
        with acting_as(OPERATOR):
            assert session.execute(text("SELECT 1")).scalar() == 1


@pytest.mark.parametrize(
    "statement",
    [
        lambda: text("SELECT count(*) FROM users"),
        lambda: select(text("*")).select_from(text("audit_logs")),
        lambda: text("SELECT log_id FROM audit_logs").columns(column("log_id")),
        lambda: select(AuditLog.log_id).where(text("1 = 1")),
        lambda: DDL("DELETE FROM users"),
        lambda: DropTable(User.__table__),
    ],
    ids=["text", "text-in-select", "textual-select", "text-fragment", "ddl", "drop-table"],
)
def test_raw_sql_and_ddl_inside_a_module_are_refused(app, statement):
    with app.app_context():
        session = get_session()
        with _refused("orders", "raw SQL"), transaction(session):
            session.execute(statement())
        assert _count(session, User) == 0  # and the table is still there


def test_the_plumbing_option_does_not_unlock_arbitrary_sql(app):
    with app.app_context():
        session = get_session()
        with _refused("admin", "raw SQL"), transaction(session):
            session.execute(
                text("UPDATE users SET role = 'admin'"),
                execution_options={"ownership_plumbing": True},
            )


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # writable CTEs: PG syntax
def test_a_write_hidden_in_a_cte_is_seen(app):
    with app.app_context():
        session = get_session()
        hidden = update(User).values(role="admin").returning(User.user_id).cte("w")
        with _refused("admin", "may not write table 'users'"), transaction(session):
            session.execute(select(hidden.c.user_id)).all()


def test_insert_from_a_granted_read_is_allowed(app):
    """admin may read users and write audit_logs, so INSERT … SELECT from users is fine."""
    with app.app_context():
        session = get_session()
        with acting_as("auth"), transaction(session):
            session.add(_user())
        with acting_as("admin"), transaction(session):
            session.execute(
                insert(AuditLog).from_select(
                    ["log_id", "action", "timestamp"],
                    select(User.user_id, User.email, User.created_at),
                )
            )
        assert _count(session, AuditLog) == 1


def test_auth_calls_admin_api_inside_its_own_transaction(app):
    with app.app_context():
        session = get_session()
        with acting_as("auth"), transaction(session):
            user = _user()
            session.add(user)
            log_id = admin_api.record_audit(
                session, "USER_REGISTERED", user_id=user.user_id, details={"k": "v"}
            )
            # Back in auth after the call: auth's rights, not admin's.
            with pytest.raises(OwnershipViolation):
                session.execute(select(AuditLog)).all()
        assert log_id.startswith("log_")
        assert _count(session, User) == 1
        with acting_as(OPERATOR):
            entry = session.get(AuditLog, log_id)
        assert entry.user_id == user.user_id and entry.details == {"k": "v"}


def test_a_failure_after_the_audit_write_leaves_neither_row(app):
    with app.app_context():
        session = get_session()
        with pytest.raises(RuntimeError, match="injected"), acting_as("auth"), transaction(session):
            session.add(_user())
            admin_api.record_audit(session, "USER_REGISTERED")
            raise RuntimeError("injected failure after the audit write")
        assert _count(session, User) == 0
        assert _count(session, AuditLog) == 0


def test_pending_caller_rows_are_written_under_the_callers_name(app):
    """A facade call flushes the caller's rows first, so they are not checked against admin."""
    with app.app_context():
        session = get_session()
        with acting_as("auth"), transaction(session):
            session.add(_user("b@example.com"))  # pending, not flushed yet
            admin_api.record_audit(session, "X")
        assert _count(session, User) == 1


def test_module_api_runs_as_its_module(app):
    @module_api("admin")
    def sneaky(session):
        session.add(_user("c@example.com"))

    with app.app_context():
        session = get_session()
        with pytest.raises(OwnershipViolation, match="'admin' may not write table 'users'"):
            with acting_as("auth"), transaction(session):
                sneaky(session)
        assert _count(session, User) == 0


def test_outbox_publish_writes_as_kernel(app):
    with app.app_context():
        session = get_session()
        with acting_as("auth"), transaction(session):
            event_id = events.publish(session, "user.registered", {"user_id": "usr_x"})
        assert event_id.startswith("evt_")


def test_guard_off_allows_everything(app_config):
    from app import create_app

    app_config["APP_ENV"] = "production"
    app_config["OWNERSHIP_GUARD"] = "off"
    app_config["SECRET_KEY"] = STRONG_SECRET
    app_config["JWT_SECRET_KEY"] = OTHER_SECRET
    app_config["ALLOW_SANDBOX_PAYMENTS"] = True
    application = create_app(app_config)
    with application.app_context():
        session = get_session()
        with acting_as("orders"):
            session.execute(select(AuditLog)).all()
    application.extensions["db"].dispose()


def test_flask_ownership_show_prints_the_table(runner):
    result = runner.invoke(args=["ownership", "show"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["table", "owner", "may", "also", "read"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["users"] == ["auth", "admin"]
    assert rows["audit_logs"][0] == "admin"


def test_docs_ownership_table_is_generated_from_the_registry(runner):
    result = runner.invoke(args=["ownership", "show", "--format", "markdown"])
    assert result.exit_code == 0
    doc = (ROOT / "docs" / "ownership.md").read_text()
    assert result.output in doc, "docs/ownership.md is stale: regenerate with `make docs`"


def test_the_docs_name_every_schema_of_the_phase_2_layout():
    """`flask db move-to-schemas` creates one schema per registered module; the rows that
    list them (the phases table, the DB_SCHEMAS setting) name each one."""
    rows = {
        "docs/phases.md": "| tables |",
        "docs/configuration.md": "| `DB_SCHEMAS` |",
    }
    for path, start in rows.items():
        [row] = [line for line in (ROOT / path).read_text().splitlines() if line.startswith(start)]
        missing = [name for name in registry.schemas() if f"`{name}`" not in row]
        assert missing == [], f"{path} does not name the schemas {missing}"
