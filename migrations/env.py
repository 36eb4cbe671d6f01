"""Alembic environment: the app's models, the URL the CLI passes in, batch mode on SQLite.

Two layouts from one lineage: flat (SQLite, phase-1 PostgreSQL) and, with the `schemas`
attribute (DB_SCHEMAS=on), one PostgreSQL schema per module. The scripts place each table
with `app.kernel.migrations.schema_of`; comparing models and database (`flask db check`)
uses the models' metadata as is for schemas, and a flat copy of it otherwise.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from alembic.util.exc import CommandError
from sqlalchemy import Identity
from sqlalchemy.schema import CreateSchema

from app.kernel import migrations
from app.kernel.db import UtcDateTime
from app.kernel.engines import EngineSettings, make_engine
from app.kernel.ownership import registry
from app.models import metadata

config = context.config


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Render our UtcDateTime as the plain type it is in the database."""
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def sqlite_compare_server_default(
    _context: object, _inspected: object, metadata_column: Any, *_defaults: object
) -> bool | None:
    """SQLite has no identity columns (an INTEGER PRIMARY KEY numbers its rows itself):
    the models' `Identity()` is not a difference there. Everything else: alembic decides.
    (SQLite only: alembic's hook for a custom comparison fails on PostgreSQL identities.)"""
    if isinstance(metadata_column.server_default, Identity):
        return False
    return None


def only_module_schemas(name: str | None, type_: str, _parent_names: object) -> bool:
    """With schemas, compare the module schemas only (not `public`, where alembic lives)."""
    return name in registry.schemas() if type_ == "schema" else True


def run_migrations_online() -> None:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL given to alembic (use `flask db …`)")
    schemas = bool(config.attributes.get("schemas"))
    # The ownership guard is for module code; migrations are the operator's.
    engine = make_engine(
        EngineSettings(url=url, guard_mode="off", pool_size=1, max_overflow=0, schemas=schemas)
    )
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # Batch mode rebuilds tables (copy, drop, rename). With foreign keys on, dropping
                # a parent table would cascade into its children, and the pragma cannot change
                # inside a transaction: switch it off first, check the result before commit.
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            layout = migrations.current_layout(connection)
            connection.commit()  # end the read, so alembic begins (and commits) its own
            if schemas and layout in (migrations.FLAT, migrations.MIXED):
                raise CommandError(
                    f"DB_SCHEMAS=on but the database has the {layout} layout: move its tables "
                    "first with `flask db move-to-schemas` (see docs/phases.md)"
                )
            if not schemas and layout in (migrations.SCHEMAS, migrations.MIXED):
                raise CommandError(
                    f"the database has the {layout} layout: set DB_SCHEMAS=on (or move the "
                    "tables back with `DB_SCHEMAS=on flask db move-to-flat`)"
                )
            context.configure(
                connection=connection,
                target_metadata=metadata if schemas else migrations.flat_metadata(metadata),
                include_schemas=schemas,
                include_name=only_module_schemas if schemas else None,
                render_as_batch=sqlite,
                compare_type=True,
                compare_server_default=sqlite_compare_server_default if sqlite else True,
                render_item=render_item,
                # Our SQLite connections begin transactions themselves, so DDL is
                # transactional on both backends: a failed migration leaves nothing behind.
                transactional_ddl=True,
            )
            with context.begin_transaction():
                if schemas:
                    for schema in registry.schemas():
                        connection.execute(CreateSchema(schema, if_not_exists=True))
                context.run_migrations()
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration left broken foreign keys: {broken[:10]}")
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run `flask db upgrade`")
run_migrations_online()
