"""Phase 2, first step: PostgreSQL itself refuses a foreign write under a module's role."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from app.kernel.grants import grant_statements, role_of
from app.kernel.ownership import registry
from tests.helpers import OTHER_SECRET, STRONG_SECRET, in_layout, layout_config, sign_up


def test_grants_follow_the_registry():
    sql = "\n".join(grant_statements(registry, app_role="licensing_app"))
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON public.users TO licensing_auth;" in sql
    assert "GRANT SELECT ON public.users TO licensing_admin;" in sql
    assert "ON public.users TO licensing_orders" not in sql
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON public.audit_logs TO licensing_admin;" in sql
    assert "ON public.audit_logs TO licensing_auth" not in sql


def test_schema_grants_give_usage_only_on_the_schemas_a_module_touches():
    lines = grant_statements(registry, app_role="licensing_app", schemas=True)
    sql = "\n".join(lines)
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON auth.users TO licensing_auth;" in sql
    assert "GRANT SELECT ON auth.users TO licensing_admin;" in sql
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON admin.audit_logs TO licensing_admin;" in sql
    usage = {line for line in lines if line.startswith("GRANT USAGE")}
    assert usage == {
        "GRANT USAGE ON SCHEMA auth TO licensing_auth;",
        "GRANT USAGE ON SCHEMA admin TO licensing_admin;",
        "GRANT USAGE ON SCHEMA auth TO licensing_admin;",
        "GRANT USAGE ON SCHEMA orders TO licensing_admin;",
        "GRANT USAGE ON SCHEMA orders TO licensing_orders;",
        "GRANT USAGE ON SCHEMA kernel TO licensing_kernel;",
        "GRANT USAGE ON SCHEMA webhooks TO licensing_webhooks;",
        # alembic's version table, which only the login role may read there
        "GRANT USAGE ON SCHEMA public TO licensing_app;",
    }
    public = [line for line in lines if "public" in line]
    assert public[0] == "GRANT USAGE ON SCHEMA public TO licensing_app;"
    assert public[1:] == [
        "DO $$ BEGIN IF to_regclass('public.alembic_version') IS NOT NULL THEN "
        "GRANT SELECT ON public.alembic_version TO licensing_app; END IF; END $$;"
    ]


@pytest.fixture
def roles_database_url(database_url):
    """The database the test's module roles get privileges in (see conftest.role_prefix)."""
    return database_url


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_database_refuses_what_the_registry_forbids(runner, database_url, role_prefix):
    app_role = f"{role_prefix}app"
    result = runner.invoke(
        args=["ownership", "grants", "--app-role", app_role, "--prefix", role_prefix]
    )
    assert result.exit_code == 0, result.output
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    users, audit_logs = in_layout("users", url), in_layout("audit_logs", url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {app_role} NOLOGIN")
        for statement in result.output.splitlines():
            conn.execute(statement)
        conn.execute(
            f"INSERT INTO {users} (user_id, email, password_hash, plan, role, failed_logins, "
            "created_at, updated_at) VALUES ('usr_g', 'g@x.io', 'h', 'free', 'user', 0, now(), now())"
        )

        def as_role(module: str, sql: str) -> None:
            with conn.transaction():
                conn.execute(f"SET LOCAL ROLE {role_of(module, role_prefix)}")
                conn.execute(sql)

        # No application code and no guard involved: the database decides.
        with pytest.raises(errors.InsufficientPrivilege):
            as_role("admin", f"UPDATE {users} SET role = 'admin'")
        with pytest.raises(errors.InsufficientPrivilege):
            as_role("orders", f"SELECT count(*) FROM {audit_logs}")
        with pytest.raises(errors.InsufficientPrivilege):
            as_role("auth", f"DELETE FROM {audit_logs}")
        as_role("admin", f"SELECT count(*) FROM {users}")  # a granted read
        as_role(
            "admin",
            f"INSERT INTO {audit_logs} (log_id, action, timestamp) VALUES ('log_g', 'X', now())",
        )
        as_role("auth", f"UPDATE {users} SET plan = 'pro' WHERE user_id = 'usr_g'")
        assert conn.execute(f"SELECT role, plan FROM {users}").fetchall() == [("user", "pro")]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_app_runs_each_module_under_its_role(app_config, database_url, role_prefix, runner):
    """With DB_ROLES on, real flows work under the module roles, and with the guard off
    the database still refuses admin code writing auth's table."""
    from sqlalchemy import select, update
    from sqlalchemy.exc import ProgrammingError

    from app import create_app
    from app.auth.models import License, User
    from app.kernel.db import get_session, read_first, transaction
    from app.kernel.ownership import acting_as, module_api

    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    app_role = f"{role_prefix}app"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {app_role} NOLOGIN")
        schemas = layout_config(url)["DB_SCHEMAS"]
        for statement in grant_statements(
            registry, app_role=app_role, schemas=schemas, prefix=role_prefix
        ):
            conn.execute(statement)

    app_config.update(DB_ROLES=True, DB_ROLE_PREFIX=role_prefix)
    app = create_app(app_config)
    client = app.test_client()
    bearer = sign_up(client, "r@example.com").headers
    lic = client.post("/api/v1/licenses/activate", json={"client_id": "role-box"}, headers=bearer)
    assert lic.status_code == 201, lic.get_json()
    assert (
        client.post(
            "/api/v1/licenses/validate", json={"token": lic.get_json()["token"]}
        ).get_json()["code"]
        == "VALID"
    )
    order = client.post(
        "/api/v1/orders",
        json={"plan": "pro", "payment_token": "tok_ok"},
        headers={**bearer, "Idempotency-Key": "k"},
    )
    assert order.status_code == 201, order.get_json()
    app.extensions["db"].dispose()

    # Only production may switch the guard off (app.settings decides the mode).
    app_config.update(
        APP_ENV="production",
        OWNERSHIP_GUARD="off",
        SECRET_KEY=STRONG_SECRET,
        JWT_SECRET_KEY=OTHER_SECRET,
        ALLOW_SANDBOX_PAYMENTS=True,
    )
    unguarded = create_app(app_config)

    @module_api("admin")
    def promote_everyone(session):
        session.execute(update(User).values(role="admin"))

    with unguarded.app_context():
        session = get_session()
        with pytest.raises(ProgrammingError, match="permission denied"), transaction(session):
            promote_everyone(session)
        # Reads in autocommit (validation's, ADR 0016) run under the acting module's role
        # too: SET LOCAL would last no statement there.
        session.rollback()
        license_id = lic.get_json()["license_id"]
        client_of = select(License.client_id).where(License.license_id == license_id)
        with acting_as("orders"), pytest.raises(ProgrammingError, match="permission denied"):
            read_first(session, client_of)
        with acting_as("auth"):
            assert read_first(session, client_of) == ("role-box",)
    unguarded.extensions["db"].dispose()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_one_prefix_names_every_role_and_the_login_role_is_created(
    app_config, database_url, role_prefix
):
    """DB_ROLE_PREFIX alone governs the grants (no --prefix/--app-role), and
    --create-login-role makes the login role the app then connects as."""
    from app import create_app

    app = create_app({**app_config, "DB_ROLE_PREFIX": role_prefix})
    try:
        result = app.test_cli_runner().invoke(args=["ownership", "grants", "--create-login-role"])
    finally:
        app.extensions["db"].dispose()
    assert result.exit_code == 0, result.output
    app_role = f"{role_prefix}app"
    statements = result.stdout.splitlines()
    assert f"CREATE ROLE {app_role} LOGIN" in statements[0]
    assert f"GRANT {role_prefix}auth TO {app_role};" in statements
    assert "licensing_" not in result.stdout
    assert f"connect as {app_role}" in result.stderr and "DB_ROLES=on" in result.stderr

    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
    as_app = url.replace("://postgres@", f"://{app_role}@")  # trust authentication here
    with psycopg.connect(as_app, autocommit=True) as conn:
        conn.execute(f"SET ROLE {role_prefix}auth")
        assert conn.execute(f"SELECT count(*) FROM {in_layout('users', url)}").fetchone() == (0,)


def _set_version(url: str, revision: str) -> None:
    """Point alembic's version table at `revision` (as the tables' owner)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE public.alembic_version SET version_num = %s", (revision,))


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_login_role_can_tell_readiness_and_production_refuses_what_it_cannot_tell(
    database_url, role_prefix, signing_key_file, tmp_path, monkeypatch
):
    """Phase 2 done as documented: the app connects as the login role the grants create.
    It is ready at head; a production start behind head, or one that cannot read the
    migration state, is refused with one line instead of serving."""
    from alembic.script import ScriptDirectory

    from app import create_app
    from app.kernel import migrations
    from app.startup import preflight

    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    app_role = f"{role_prefix}app"
    schemas = layout_config(url)["DB_SCHEMAS"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {app_role} LOGIN")
        for statement in grant_statements(
            registry, app_role=app_role, schemas=schemas, prefix=role_prefix
        ):
            conn.execute(statement)
    env = {
        "APP_ENV": "production",
        "DATABASE_URL": database_url.replace("://postgres@", f"://{app_role}@"),
        "DB_ROLES": "on",
        "DB_ROLE_PREFIX": role_prefix,
        "DB_SCHEMAS": "on" if schemas else "off",
        "LICENSE_SIGNING_KEYS": signing_key_file,
        "SECRET_KEY": STRONG_SECRET,
        "JWT_SECRET_KEY": OTHER_SECRET,
        "ALLOW_SANDBOX_PAYMENTS": "1",
        "INSTANCE_PATH": str(tmp_path / "instance"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REDIS_URL", raising=False)

    assert preflight() is None
    app = create_app()
    try:
        ready = app.test_client().get("/readyz")
    finally:
        app.extensions["db"].dispose()
    assert ready.status_code == 200, ready.get_json()

    [head] = migrations.head_revisions()
    script = ScriptDirectory.from_config(migrations.alembic_config("sqlite://"))
    _set_version(url, script.get_revision(head).down_revision)
    try:
        assert preflight() == "refusing to serve with APP_ENV=production: migrations: behind"
    finally:
        _set_version(url, head)

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"REVOKE SELECT ON public.alembic_version FROM {app_role}")
    message = preflight()
    assert message is not None and "\n" not in message
    assert message.startswith("refusing to serve with APP_ENV=production: migrations: ")
    assert "permission denied for table alembic_version" in message
