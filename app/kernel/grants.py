"""PostgreSQL roles and GRANTs generated from the ownership registry (phase 2, docs/phases.md).

One NOLOGIN role per module (and the kernel) with exactly the rights of docs/ownership.md:
the owner reads and writes its tables, granted readers may SELECT, nobody else gets anything. The
application's login role is made a member of every module role, so it can take on a
module's role for that module's statements (`SET LOCAL ROLE`); then PostgreSQL itself
refuses a foreign write, whatever the application code does.

In the flat layout every table is in `public`; in the schema layout (DB_SCHEMAS=on) each
table is in its owner's schema, and a role gets USAGE on exactly the schemas whose tables
it may touch. Alembic's version table stays in `public` in both layouts; the login role itself
may read it (and nothing else there), because readiness and the start-up check ask it
whether the migrations are at head before any module acts.
"""

from __future__ import annotations

from app.kernel.ownership import Registry

ROLE_PREFIX = "licensing_"
FLAT_SCHEMA = "public"
VERSION_TABLE = f"{FLAT_SCHEMA}.alembic_version"  # alembic's default, in every layout


def _grant(privileges: str, table: str, role: str) -> str:
    """A GRANT that skips a table the database does not have yet (it is behind head):
    re-running the grants after the upgrade that creates it grants it then."""
    return (
        f"DO $$ BEGIN IF to_regclass('{table}') IS NOT NULL THEN "
        f"GRANT {privileges} ON {table} TO {role}; END IF; END $$;"
    )


def role_of(module: str, prefix: str = ROLE_PREFIX) -> str:
    return f"{prefix}{module}"


def grant_statements(
    registry: Registry, *, app_role: str, schemas: bool = False, prefix: str = ROLE_PREFIX
) -> list[str]:
    """The SQL that creates the module roles and grants them their tables.

    The statements are idempotent, so they can be re-run after every upgrade (a migration
    may add or rebuild a table) and after moving to the schema layout; tables the database
    does not have yet are skipped.
    """

    def schema_of(table: str) -> str:
        return registry.schema_of(table) if schemas else FLAT_SCHEMA

    sql: list[str] = []
    for decl in sorted(registry.modules(), key=lambda d: d.name):
        role = role_of(decl.name, prefix)
        sql.append(
            f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN; "
            f"EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
        )
        for schema in sorted({schema_of(t) for t in decl.owns | decl.reads}):
            sql.append(f"GRANT USAGE ON SCHEMA {schema} TO {role};")
        for table in sorted(decl.owns):
            sql.append(
                _grant("SELECT, INSERT, UPDATE, DELETE", f"{schema_of(table)}.{table}", role)
            )
        for table in sorted(decl.reads):
            sql.append(_grant("SELECT", f"{schema_of(table)}.{table}", role))
        sql.append(f"GRANT {role} TO {app_role};")
    sql.append(f"GRANT USAGE ON SCHEMA {FLAT_SCHEMA} TO {app_role};")
    sql.append(_grant("SELECT", VERSION_TABLE, app_role))
    return sql
