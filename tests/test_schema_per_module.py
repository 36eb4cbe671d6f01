"""Phase 2 on PostgreSQL: one schema per module, the move from the flat layout with data in
it (and back), and the database refusing a foreign write under the module roles."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from app import create_app
from app.kernel.ownership import registry
from tests.helpers import OTHER_SECRET, STRONG_SECRET

pytestmark = pytest.mark.postgres

PASSWORD = "correct horse battery"


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def where_tables_live(url: str) -> dict[str, str]:
    """{table: schema} for every registered table found in the database."""
    with psycopg.connect(libpq(url)) as conn:
        rows = conn.execute(
            "SELECT table_name, table_schema FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return {name: schema for name, schema in rows if name in registry.tables()}


def snapshot(url: str, layout: dict[str, str]) -> dict[str, list[tuple]]:
    """Every row of every registered table, in a stable order."""
    with psycopg.connect(libpq(url)) as conn:
        return {
            table: conn.execute(f'SELECT * FROM "{schema}"."{table}" ORDER BY 1, 2').fetchall()
            for table, schema in sorted(layout.items())
        }


def make_app(url: str, signing_key_file: str, tmp_path, **extra):
    config = {
        "APP_ENV": "testing",
        "DATABASE_URL": url,
        "LICENSE_SIGNING_KEYS": signing_key_file,
        "SANDBOX_LEDGER": str(tmp_path / "ledger.jsonl"),
        "ARGON2_TIME_COST": 1,
        "ARGON2_MEMORY_COST": 1024,
        "RATELIMIT_ENABLED": False,
        "DB_SCHEMAS": False,
    }
    config.update(extra)
    return create_app(config)


def cli(app, *args: str, input: str | None = None):
    return app.test_cli_runner().invoke(args=list(args), input=input)


def seed(app) -> dict:
    """Users, licenses, a paid order, audit entries, outbox events — through the API."""
    client = app.test_client()
    made = {"tokens": []}
    for n in range(3):
        email = f"user{n}@example.com"
        assert (
            client.post(
                "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
            ).status_code
            == 201
        )
        access = client.post(
            "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
        ).get_json()["access_token"]
        bearer = {"Authorization": f"Bearer {access}"}
        lic = client.post(
            "/api/v1/licenses/activate", json={"client_id": f"box-{n}"}, headers=bearer
        )
        assert lic.status_code == 201, lic.get_json()
        made["tokens"].append(lic.get_json()["token"])
    order = client.post(
        "/api/v1/orders",
        json={"plan": "pro", "payment_token": "tok_ok"},
        headers={**bearer, "Idempotency-Key": "phase2"},
    )
    assert order.status_code == 201, order.get_json()
    made["bearer"] = bearer
    return made


def test_a_fresh_database_in_the_schema_layout(fresh_pg_url, signing_key_file, tmp_path):
    app = make_app(fresh_pg_url, signing_key_file, tmp_path, DB_SCHEMAS=True)
    try:
        result = cli(app, "db", "upgrade")
        assert result.exit_code == 0, result.output
        assert where_tables_live(fresh_pg_url) == {
            t: registry.schema_of(t) for t in registry.tables()
        }
        assert cli(app, "db", "layout").output.strip() == "schemas"
        check = cli(app, "db", "check")
        assert check.exit_code == 0, check.output
        assert app.test_client().get("/readyz").get_json()["checks"]["layout"] == "ok"
        seed(app)
    finally:
        app.extensions["db"].dispose()


def test_flat_to_schemas_and_back_keeps_every_row(fresh_pg_url, signing_key_file, tmp_path):
    flat_app = make_app(fresh_pg_url, signing_key_file, tmp_path)
    assert cli(flat_app, "db", "upgrade").exit_code == 0
    made = seed(flat_app)
    assert (
        cli(
            flat_app,
            "users",
            "create-admin",
            "root@example.com",
            "--password-stdin",
            input=PASSWORD + "\n",
        ).exit_code
        == 0
    )
    flat_app.extensions["db"].dispose()
    flat = where_tables_live(fresh_pg_url)
    assert set(flat.values()) == {"public"}
    before = snapshot(fresh_pg_url, flat)
    assert all(before[t] for t in ("users", "licenses", "audit_logs", "orders", "event_outbox"))

    # A schema-mode app refuses to migrate a flat database (the tables would be created twice).
    schema_app = make_app(fresh_pg_url, signing_key_file, tmp_path, DB_SCHEMAS=True)
    refused = cli(schema_app, "db", "upgrade")
    assert refused.exit_code == 1 and "move-to-schemas" in refused.output
    assert schema_app.test_client().get("/readyz").get_json()["checks"]["layout"] == (
        "flat, expected schemas"
    )

    moved = cli(schema_app, "db", "move-to-schemas")
    assert moved.exit_code == 0, moved.output
    rows = sum(len(v) for v in before.values())
    assert f"moved {len(registry.tables())} tables ({rows} rows)" in moved.output
    after_layout = where_tables_live(fresh_pg_url)
    assert after_layout == {t: registry.schema_of(t) for t in registry.tables()}
    assert snapshot(fresh_pg_url, after_layout) == before
    assert cli(schema_app, "db", "check").exit_code == 0
    assert cli(schema_app, "db", "upgrade").exit_code == 0  # at head, nothing to do
    assert cli(schema_app, "db", "move-to-schemas").output.strip() == (
        "already schemas; nothing to move"
    )

    # The moved data serves the app: old tokens validate, old accounts log in, new rows land.
    client = schema_app.test_client()
    assert client.get("/readyz").status_code == 200, client.get("/readyz").get_json()
    for token in made["tokens"]:
        answer = client.post("/api/v1/licenses/validate", json={"token": token}).get_json()
        assert answer["code"] == "VALID"
    login = client.post(
        "/api/v1/auth/login", json={"email": "user2@example.com", "password": PASSWORD}
    )
    assert login.status_code == 200
    bearer = {"Authorization": f"Bearer {login.get_json()['access_token']}"}
    assert (
        client.post(
            "/api/v1/licenses/activate", json={"client_id": "after-move"}, headers=bearer
        ).status_code
        == 201
    )
    admin = client.post(
        "/api/v1/auth/login", json={"email": "root@example.com", "password": PASSWORD}
    )
    admin_bearer = {"Authorization": f"Bearer {admin.get_json()['access_token']}"}
    logs = client.get("/api/v1/admin/audit-logs?limit=100", headers=admin_bearer).get_json()
    # + two logins (the user's, the admin's) and the activation
    assert len(logs["items"]) == len(before["audit_logs"]) + 3
    stats = client.get("/api/v1/admin/stats/licenses", headers=admin_bearer).get_json()
    assert sum(item["count"] for item in stats["items"]) == len(before["licenses"]) + 1
    during = snapshot(fresh_pg_url, after_layout)
    schema_app.extensions["db"].dispose()

    # And back (the rollback path): every row again where the flat layout expects it.
    back = cli(schema_app, "db", "move-to-flat")
    assert back.exit_code == 0, back.output
    assert set(where_tables_live(fresh_pg_url).values()) == {"public"}
    assert snapshot(fresh_pg_url, where_tables_live(fresh_pg_url)) == during
    flat_app = make_app(fresh_pg_url, signing_key_file, tmp_path)
    assert flat_app.test_client().get("/readyz").status_code == 200
    flat_app.extensions["db"].dispose()


def test_a_failed_move_moves_nothing(fresh_pg_url, signing_key_file, tmp_path):
    """One transaction: a table that cannot move (its schema name is taken by a clashing
    table) rolls every other move back."""
    app = make_app(fresh_pg_url, signing_key_file, tmp_path)
    assert cli(app, "db", "upgrade").exit_code == 0
    seed(app)
    before = snapshot(fresh_pg_url, where_tables_live(fresh_pg_url))
    with psycopg.connect(libpq(fresh_pg_url), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA orders")
        conn.execute("CREATE TABLE orders.orders (x int)")  # in the way of the move
    result = cli(app, "db", "move-to-schemas")
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    layout = where_tables_live(fresh_pg_url)
    assert layout["users"] == "public" and layout["licenses"] == "public"
    assert (
        snapshot(
            fresh_pg_url, {t: s for t, s in layout.items() if s == "public"} | {"orders": "public"}
        )
        == before
    )
    app.extensions["db"].dispose()


@pytest.fixture
def roles_database_url(fresh_pg_url):
    """The database the test's module roles get privileges in (see conftest.role_prefix)."""
    return fresh_pg_url


def test_with_the_guard_off_postgresql_refuses_admin_writing_auth_users(
    fresh_pg_url, signing_key_file, tmp_path, role_prefix
):
    """The schema layout with module roles, the app connected as an ordinary login role that
    owns its tables (not a superuser): the database itself enforces ownership."""
    from sqlalchemy import update
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ProgrammingError

    from app.auth.models import User
    from app.kernel.db import get_session, transaction
    from app.kernel.ownership import module_api

    app_role = f"{role_prefix}app"
    database = make_url(fresh_pg_url).database
    with psycopg.connect(libpq(fresh_pg_url), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {app_role} LOGIN NOSUPERUSER NOCREATEROLE")
        conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO {app_role}')
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {app_role}")  # alembic_version
    app_url = make_url(fresh_pg_url).set(username=app_role).render_as_string(hide_password=False)

    settings = {"DB_SCHEMAS": True, "DB_ROLES": True, "DB_ROLE_PREFIX": role_prefix}
    app = make_app(app_url, signing_key_file, tmp_path, **settings)
    assert cli(app, "db", "upgrade").exit_code == 0  # the login role creates and owns it all
    grants = cli(app, "ownership", "grants", "--app-role", app_role, "--prefix", role_prefix)
    assert "ON auth.users" in grants.output
    in_public = [line for line in grants.output.splitlines() if "public." in line]
    assert in_public and all("public.alembic_version" in line for line in in_public)
    with psycopg.connect(libpq(fresh_pg_url), autocommit=True) as conn:  # a DBA makes roles
        for statement in grants.output.splitlines():
            conn.execute(statement)
    seed(app)  # every module's real work runs under its role
    assert app.test_client().get("/readyz").status_code == 200  # operator reads as the owner
    app.extensions["db"].dispose()

    # Only production may switch the guard off (app.settings decides the mode).
    production = {
        "APP_ENV": "production",
        "OWNERSHIP_GUARD": "off",
        "SECRET_KEY": STRONG_SECRET,
        "JWT_SECRET_KEY": OTHER_SECRET,
        "ALLOW_SANDBOX_PAYMENTS": True,
    }
    unguarded = make_app(app_url, signing_key_file, tmp_path, **production, **settings)

    @module_api("admin")
    def promote_everyone(session):
        session.execute(update(User).values(role="admin"))

    with unguarded.app_context():
        session = get_session()
        with pytest.raises(ProgrammingError, match="permission denied for table users"):
            with transaction(session):
                promote_everyone(session)
    unguarded.extensions["db"].dispose()
    with psycopg.connect(libpq(app_url)) as conn:
        admins = conn.execute("SELECT count(*) FROM auth.users WHERE role = 'admin'").fetchone()
        assert admins == (0,)
        with pytest.raises(errors.InsufficientPrivilege):
            with conn.transaction():
                conn.execute(f"SET LOCAL ROLE {role_prefix}admin")
                conn.execute("UPDATE auth.users SET role = 'admin'")
