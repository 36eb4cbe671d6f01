"""One database copy, per backend: SQLite through the online backup API, PostgreSQL through
pg_dump and pg_restore — made, checked (integrity check, or a restore into a scratch
database, with row counts) and restored in place. The operations over them (manifests,
phase-3 parts, pruning) are in `backups.py`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from app.kernel.engines import normalise_url

# Every table of the database: `public` (the flat layout, alembic) and the module schemas.
# Every table of the database: `public` (the flat layout, alembic) and the module schemas.
PG_TABLES_SQL = (
    "SELECT CASE WHEN schemaname = 'public' THEN tablename ELSE schemaname || '.' || tablename END"
    " FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    " ORDER BY 1"
)
TABLES_SQL = (
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
)


class BackupError(RuntimeError):
    """A backup, verification or restore failed; the message says what and where."""


def stamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"


def private_file(path: Path) -> Path:
    """Create `path` empty, readable and writable by this user only (0600), whatever the
    umask: backups hold password hashes and every user's data."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.chmod(path, 0o600)  # O_CREAT's mode is masked by the umask; this is not
    return path


# --- SQLite --------------------------------------------------------------------------


def sqlite_file(url: str) -> Path:
    parsed = make_url(url)
    return Path(parsed.database or "")


def sqlite_verify(path: Path) -> tuple[dict[str, int], str | None]:
    """integrity_check on the copy; its row counts and schema revision."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
        if result != [("ok",)]:
            raise BackupError(f"{path}: integrity_check failed: {result[:5]}")
        return _contents(conn, [r[0] for r in conn.execute(TABLES_SQL)])
    finally:
        conn.close()


def _quoted(table: str) -> str:
    """`name` or `schema.name` (module schemas, phase 2) as a _quoted SQL identifier."""
    return ".".join(f'"{part}"' for part in table.split("."))


def _contents(conn: Any, tables: list[str]) -> tuple[dict[str, int], str | None]:
    """Row counts per table and the schema revision, on a sqlite3 or psycopg connection.
    Tables outside the default schema are named `schema.table`."""
    counts = {
        t: conn.execute(f"SELECT count(*) FROM {_quoted(t)}").fetchone()[0]  # noqa: S608
        for t in tables
    }
    revision = None
    if "alembic_version" in tables:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else None
    return counts, revision


def sqlite_backup(url: str, target: Path) -> None:
    """Copy with the online backup API: a consistent snapshot while writers go on."""
    source = sqlite_file(url)
    if not source.exists():
        raise BackupError(f"the database file {source} does not exist")
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(private_file(target))
    try:
        src.backup(dst, pages=-1)  # one step: the copy is a single consistent snapshot
        dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
    finally:
        dst.close()
        src.close()


# --- PostgreSQL ----------------------------------------------------------------------


def libpq_url(url: str) -> str:
    """The URL pg_dump/psql understand (no SQLAlchemy driver suffix), password included:
    for psycopg in this process only, never for a command line."""
    return (
        make_url(normalise_url(url))
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """(the URL without its password, the child's environment with PGPASSWORD): a password
    on a command line is visible to every user of the host (ps, /proc/<pid>/cmdline)."""
    parsed = make_url(normalise_url(url)).set(drivername="postgresql")
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    return parsed._replace(password=None).render_as_string(hide_password=False), env


def run(args: list[str], what: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=3600,
            env=env,
            preexec_fn=lambda: os.umask(0o077),  # files it writes: this user only
        )
    except FileNotFoundError:
        raise BackupError(f"{args[0]} is not installed (needed to {what})") from None
    if result.returncode != 0:
        detail = " ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
        raise BackupError(f"{what} failed: {detail[-500:]}")
    return result


def pg_scratch_restore(url: str, dump: Path) -> tuple[dict[str, int], str | None]:
    """Restore the dump into a scratch database, count its rows, drop it."""
    import psycopg

    base = make_url(libpq_url(url))
    scratch = f"{base.database}_verify_{uuid.uuid4().hex[:8]}"
    admin_url = base.set(database="postgres").render_as_string(hide_password=False)
    scratch_url = base.set(database=scratch).render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        try:
            conn.execute(f'CREATE DATABASE "{scratch}"')
        except psycopg.errors.InsufficientPrivilege:
            raise BackupError(
                "a PostgreSQL backup is verified by restoring it into a scratch database, and "
                f"the role {base.username or '(default)'} may not create one: "
                f"ALTER ROLE {base.username or '…'} CREATEDB (as a superuser)"
            ) from None
    try:
        target, env = libpq_target(scratch_url)
        run(
            ["pg_restore", "--no-owner", "--exit-on-error", "-d", target, str(dump)],
            "a verification restore",
            env,
        )
        with psycopg.connect(scratch_url) as conn:
            return _contents(conn, [r[0] for r in conn.execute(PG_TABLES_SQL)])
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


def pg_reachable(url: str) -> None:
    """Connect once, so a database that is missing or out of reach is psycopg's one-line
    error (the CLI reports it as such), not pg_dump's paragraph."""
    import psycopg

    psycopg.connect(libpq_url(url), connect_timeout=10).close()


def sqlite_restore(path: Path, url: str, *, force: bool, now: datetime) -> str:
    target = sqlite_file(url)
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} does not exist (the folder of DATABASE_URL)")
    has_data = target.exists() and target.stat().st_size > 0
    if has_data and not force:
        raise BackupError(f"{target} exists; pass --force to replace it (it will be kept)")
    kept = None
    if has_data:
        kept = target.with_name(f"{target.name}.replaced-{stamp(now)}")
        sqlite_backup(f"sqlite:///{target}", kept)  # a consistent copy, WAL included
    # The online backup API, backwards: the backup's pages are written into the live
    # database through SQLite's own locking, as one write transaction. Workers that have it
    # open see the restored data from their next transaction on (no file is swapped under
    # them, so nothing goes to a deleted inode); writers wait on the lock meanwhile.
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    live = sqlite3.connect(target, timeout=60)
    try:
        source.backup(live, pages=-1)
    finally:
        live.close()
        source.close()
    return f"restored {path.name} into {target}" + (
        f"; the replaced database is {kept}" if kept else ""
    )


def pg_restore(path: Path, url: str, *, force: bool, now: datetime) -> str:
    import psycopg

    with psycopg.connect(libpq_url(url), connect_timeout=10) as conn:
        has_tables = conn.execute(
            "SELECT count(*) FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()[0]
    target, env = libpq_target(url)
    kept_note = ""
    if has_tables:
        if not force:
            raise BackupError(
                "the database has tables; pass --force to replace it (it will be dumped first)"
            )
        kept = private_file(path.parent / f"replaced-{stamp(now)}.dump")
        run(
            ["pg_dump", "-Fc", "--no-owner", "-f", str(kept), target],
            "dumping the replaced database",
            env,
        )
        kept_note = f"; the replaced database was dumped to {kept}"
    # One transaction: the running service's connections see the old tables until the
    # commit and the restored ones after it; a statement that waited on a dropped table
    # fails (it was not acknowledged). Any error rolls the whole restore back.
    run(
        [
            "pg_restore",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--exit-on-error",
            "--single-transaction",
            "-d",
            target,
            str(path),
        ],
        "pg_restore",
        env,
    )
    return f"restored {path.name}{kept_note}"
