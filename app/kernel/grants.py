"""PostgreSQL roles and GRANTs generated from the ownership registry (DESIGN §7, phase 2).

One NOLOGIN role per module (and the kernel) with exactly the rights of DESIGN §2: the owner
reads and writes its tables, granted readers may SELECT, nobody else gets anything. The
application's login role is made a member of every module role, so it can take on a
module's role for that module's statements (`SET LOCAL ROLE`); then PostgreSQL itself
refuses a foreign write, whatever the application code does.
"""

from __future__ import annotations

from app.kernel.ownership import Registry

ROLE_PREFIX = "licensing_"


def role_of(module: str, prefix: str = ROLE_PREFIX) -> str:
    return f"{prefix}{module}"


def grant_statements(
    registry: Registry, *, app_role: str, schema: str | None = None, prefix: str = ROLE_PREFIX
) -> list[str]:
    """The SQL that creates the module roles and grants them their tables.

    `schema` None means the flat phase-1 layout (tables in `public`); the statements are
    idempotent, so they can be re-run after every migration that adds a table.
    """
    table_schema = schema or "public"
    sql: list[str] = []
    for decl in sorted(registry.modules(), key=lambda d: d.name):
        role = role_of(decl.name, prefix)
        sql.append(
            f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN; "
            f"EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
        )
        sql.append(f"GRANT USAGE ON SCHEMA {table_schema} TO {role};")
        for table in sorted(decl.owns):
            sql.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table_schema}.{table} TO {role};")
        for table in sorted(decl.reads):
            sql.append(f"GRANT SELECT ON {table_schema}.{table} TO {role};")
        sql.append(f"GRANT {role} TO {app_role};")
    return sql
