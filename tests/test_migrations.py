"""Migrations: one lineage on SQLite and PostgreSQL; round trip; models and migrations agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from app import create_app
from app.kernel import migrations
from app.kernel.db import EngineSettings, make_engine
from app.models import metadata

ALL_TABLES = {t.name for t in metadata.sorted_tables}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fresh.db"
    return request.getfixturevalue("fresh_pg_url")


def _tables(url: str) -> set[str]:
    engine = make_engine(EngineSettings(url=url, guard_mode="off"))
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _cli(url: str, *args: str):
    application = create_app({"APP_ENV": "testing", "DATABASE_URL": url})
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
    assert "base (behind head" in _cli(empty_url, "db", "current").output
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
        conn.exec_driver_sql("DROP INDEX ix_audit_logs_action")
    engine.dispose()
    result = _cli(empty_url, "db", "check")
    assert result.exit_code != 0
    assert "models and migrations disagree" in result.output


def test_one_lineage():
    assert len(migrations.head_revisions()) == 1
