"""Alembic environment: the app's models, the URL the CLI passes in, batch mode on SQLite."""

from __future__ import annotations

from alembic import context

from app.kernel.db import EngineSettings, UtcDateTime, make_engine
from app.models import metadata

config = context.config


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Render our UtcDateTime as the plain type it is in the database."""
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations_online() -> None:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL given to alembic (use `flask db …`)")
    # The ownership guard is for module code; migrations are the operator's.
    engine = make_engine(EngineSettings(url=url, guard_mode="off", pool_size=1, max_overflow=0))
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # Batch mode rebuilds tables (copy, drop, rename). With foreign keys on, dropping
                # a parent table would cascade into its children, and the pragma cannot change
                # inside a transaction: switch it off first, check the result before commit.
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            context.configure(
                connection=connection,
                target_metadata=metadata,
                render_as_batch=sqlite,
                compare_type=True,
                compare_server_default=True,
                render_item=render_item,
                # Our SQLite connections begin transactions themselves, so DDL is
                # transactional on both backends: a failed migration leaves nothing behind.
                transactional_ddl=True,
            )
            with context.begin_transaction():
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
