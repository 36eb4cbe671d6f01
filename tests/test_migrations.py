"""Migrations: one lineage on SQLite and PostgreSQL; round trip; models and migrations agree."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from app import create_app
from app.kernel import migrations
from app.kernel.engines import EngineSettings, make_engine
from app.models import metadata
from tests.helpers import PG_SCHEMAS, in_layout, layout_config

ALL_TABLES = {t.name for t in metadata.sorted_tables}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fresh.db"
    return request.getfixturevalue("fresh_pg_url")


def _tables(url: str) -> set[str]:
    """The tables where the run's layout puts them (module schemas in the schema pass)."""
    engine = make_engine(EngineSettings(url=url, guard_mode="off"))
    try:
        inspector = inspect(engine)
        if engine.dialect.name == "postgresql" and PG_SCHEMAS:
            return {
                name
                for schema in inspector.get_schema_names()
                for name in inspector.get_table_names(schema=schema)
                if schema not in ("public", "information_schema")
            }
        return set(inspector.get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _cli(url: str, *args: str):
    application = create_app({"APP_ENV": "testing", "DATABASE_URL": url, **layout_config(url)})
    try:
        return application.test_cli_runner().invoke(args=list(args))
    finally:
        application.extensions["db"].dispose()


def test_round_trip_upgrade_downgrade_upgrade(empty_url):
    result = _cli(empty_url, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert _tables(empty_url) == ALL_TABLES

    result = _cli(empty_url, "db", "downgrade", "base")
    assert result.exit_code == 0, result.output
    assert "database at base" in result.output
    assert _tables(empty_url) == set()

    result = _cli(empty_url, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert _tables(empty_url) == ALL_TABLES


def test_current_says_whether_at_head(empty_url):
    before = _cli(empty_url, "db", "current").output
    if empty_url.startswith("sqlite"):  # no file yet, and only `db upgrade` creates one
        assert "does not exist (`flask db upgrade` creates it)" in before, before
    else:
        assert "base (behind head" in before, before
    _cli(empty_url, "db", "upgrade")
    head = ",".join(sorted(migrations.head_revisions()))
    assert _cli(empty_url, "db", "current").output.strip() == f"{head} (head)"


def test_check_passes_when_models_and_migrations_agree(empty_url):
    _cli(empty_url, "db", "upgrade")
    result = _cli(empty_url, "db", "check")
    assert result.exit_code == 0, result.output
    assert "models and migrations agree" in result.output


def test_check_fails_when_a_migration_is_missing(empty_url):
    _cli(empty_url, "db", "upgrade")
    # Simulate a model change without its migration: drop an index the models declare.
    engine = make_engine(EngineSettings(url=empty_url, guard_mode="off"))
    with engine.begin() as conn:
        schema = "admin." if layout_config(empty_url)["DB_SCHEMAS"] else ""
        conn.exec_driver_sql(f"DROP INDEX {schema}ix_audit_logs_action_timestamp_log_id")
    engine.dispose()
    result = _cli(empty_url, "db", "check")
    assert result.exit_code != 0
    assert "models and migrations disagree" in result.output


def test_one_lineage():
    assert len(migrations.head_revisions()) == 1


def test_each_step_is_logged_on_one_line(tmp_path, caplog):
    """alembic logs "Running upgrade A -> B, <the docstring's first paragraph>": a summary
    line of its own, not a paragraph whose line breaks the JSON log shows as `\\n`."""
    script = ScriptDirectory.from_config(migrations.alembic_config("sqlite://"))
    caplog.set_level(logging.INFO, logger="alembic")
    migrations.upgrade(f"sqlite:///{tmp_path}/app.db")
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Running ")]
    assert len(steps) == len(list(script.walk_revisions()))
    assert [step for step in steps if "\n" in step] == []


def test_downgrade_minus_one_and_clean_cli_errors(tmp_path):
    url = f"sqlite:///{tmp_path}/cli.db"
    assert _cli(url, "db", "upgrade").exit_code == 0
    heads = sorted(migrations.head_revisions())
    result = _cli(url, "db", "downgrade", "-1")
    assert result.exit_code == 0, result.output
    assert "behind head" in _cli(url, "db", "current").output

    bad = _cli(url, "db", "upgrade", "no-such-revision")
    assert bad.exit_code == 1
    assert "Error:" in bad.output and "Traceback" not in bad.output
    behind = _cli(url, "db", "check")
    assert behind.exit_code == 1
    assert "not up to date" in behind.output
    assert _cli(url, "db", "upgrade").exit_code == 0
    assert _cli(url, "db", "current").output.startswith(",".join(heads))


BATCH_MIGRATION = """
from alembic import op
import sqlalchemy as sa

revision = "zz_test_batch"
down_revision = {head!r}


def upgrade():
    with op.batch_alter_table("users") as batch_op:
        batch_op.alter_column("plan", existing_type=sa.String(32), type_=sa.String(40))


def downgrade():
    with op.batch_alter_table("users") as batch_op:
        batch_op.alter_column("plan", existing_type=sa.String(40), type_=sa.String(32))
"""


def test_sqlite_batch_rebuild_of_a_parent_table_keeps_child_rows(tmp_path):
    """Batch mode copies and drops the table; foreign keys must not cascade into children."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path}/fk.db"
    migrations.upgrade(url)
    engine = make_engine(EngineSettings(url=url, guard_mode="off"))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (user_id, email, password_hash, plan, role, failed_logins,"
                " created_at, updated_at) VALUES ('usr_1', 'a@x.io', 'h', 'free', 'user', 0,"
                " '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO licenses (license_id, user_id, client_id, status, created_at,"
                " updated_at, expires_at, version) VALUES ('lic_1', 'usr_1', 'c1', 'active',"
                " '2026-01-01 00:00:00', '2026-01-01 00:00:00', '2027-01-01 00:00:00', 1)"
            )
        )
    versions = tmp_path / "versions"
    versions.mkdir()
    [head] = migrations.head_revisions()
    (versions / "zz_test_batch.py").write_text(BATCH_MIGRATION.format(head=head))
    cfg = migrations.alembic_config(url)
    cfg.set_main_option("version_locations", f"{migrations.MIGRATIONS_DIR / 'versions'} {versions}")
    cfg.set_main_option("path_separator", "space")
    from alembic import command

    command.upgrade(cfg, "zz_test_batch")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM licenses")).scalar() == 1
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1  # back on for the app
    engine.dispose()


def test_the_outbox_rebuild_keeps_every_event_in_creation_order(empty_url):
    """0006 gives the outbox its `seq`: rows already there keep their ids and payloads and
    are numbered in the order they were created, and the way back keeps them too."""
    assert _cli(empty_url, "db", "upgrade", "0005").exit_code == 0
    outbox = in_layout("event_outbox", empty_url)
    engine = make_engine(EngineSettings(url=empty_url, guard_mode="off"))
    created = ["2026-01-03 00:00:00", "2026-01-01 00:00:00", "2026-01-02 00:00:00"]
    with engine.begin() as conn:
        for n, at in enumerate(created):
            conn.execute(
                text(
                    f"INSERT INTO {outbox} (event_id, event_type, aggregate_id, payload,"
                    " created_at, attempts) VALUES (:id, 'order.paid', 'ord_1', :payload, :at, 0)"
                ),
                {"id": f"evt_{n}", "payload": f'{{"n": {n}}}', "at": at},
            )
    assert _cli(empty_url, "db", "upgrade").exit_code == 0
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT seq, event_id, payload FROM {outbox} ORDER BY seq")).all()
    assert [(seq, event_id) for seq, event_id, _ in rows] == [
        (1, "evt_1"),
        (2, "evt_2"),
        (3, "evt_0"),
    ]
    assert [json.loads(p) if isinstance(p, str) else p for _, _, p in rows] == [
        {"n": 1},
        {"n": 2},
        {"n": 0},
    ]
    assert _cli(empty_url, "db", "downgrade", "0005").exit_code == 0
    with engine.connect() as conn:
        back = conn.execute(text(f"SELECT event_id FROM {outbox} ORDER BY created_at")).scalars()
        assert list(back) == ["evt_1", "evt_2", "evt_0"]
    engine.dispose()


@pytest.fixture
def roles_database_url(fresh_pg_url):
    return fresh_pg_url


@pytest.mark.postgres
def test_upgrading_keeps_the_module_roles_privileges(fresh_pg_url, role_prefix):
    """Grants applied at 0005 (behind head: tables of later revisions are skipped) still hold
    after 0006 changed the outbox, and new events continue its numbering."""
    import psycopg

    from app.kernel.grants import grant_statements
    from app.kernel.ownership import registry

    assert _cli(fresh_pg_url, "db", "upgrade", "0005").exit_code == 0
    libpq = fresh_pg_url.replace("postgresql+psycopg://", "postgresql://")
    outbox = in_layout("event_outbox", fresh_pg_url)
    kernel = f"{role_prefix}kernel"
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role_prefix}app NOLOGIN")
        for statement in grant_statements(
            registry,
            app_role=f"{role_prefix}app",
            schemas=layout_config(fresh_pg_url)["DB_SCHEMAS"],
            prefix=role_prefix,
        ):
            conn.execute(statement)  # event_leases does not exist yet: skipped, no error
        conn.execute(
            f"INSERT INTO {outbox} (event_id, event_type, payload, created_at, attempts)"
            " VALUES ('evt_old', 'x', '{}', now(), 0)"
        )
    assert _cli(fresh_pg_url, "db", "upgrade").exit_code == 0
    with psycopg.connect(libpq) as conn:
        privilege = conn.execute(
            "SELECT has_table_privilege(%s, %s, 'INSERT')", (kernel, outbox)
        ).fetchone()
        assert privilege == (True,)
        with conn.transaction():
            conn.execute(f"SET LOCAL ROLE {kernel}")
            conn.execute(
                f"INSERT INTO {outbox} (event_id, event_type, payload, created_at, attempts)"
                " VALUES ('evt_new', 'x', '{}', now(), 0)"
            )
        seqs = conn.execute(f"SELECT event_id, seq FROM {outbox} ORDER BY seq").fetchall()
        assert seqs == [("evt_old", 1), ("evt_new", 2)]
