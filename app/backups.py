"""Verified backups: SQLite through the online backup API, PostgreSQL through pg_dump.

A backup counts only once it is verified: SQLite's copy passes `PRAGMA integrity_check`;
a PostgreSQL dump is restored into a scratch database. Each backup gets a manifest
(`<file>.json`: size, SHA-256, row counts, schema revision) written last, so a backup
without a manifest is an unfinished one and never counts.

This is operator code. Copies, counts and restores go through the database's own tools and
plain driver connections (the online backup API, pg_dump, pg_restore), which the ownership
guard does not watch: it guards the app's engines. The one step that uses an engine (marking
outbox events to be sent again after a phase-3 restore) runs under the guard, as OPERATOR.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from app.kernel.db import normalise_url

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


@dataclass(frozen=True)
class Manifest:
    file: str
    backend: str
    created_at: str
    size: int
    sha256: str
    row_counts: dict[str, int]
    revision: str | None
    verified: str  # how: "integrity_check" or "restored into a scratch database"
    database: str = "main"  # or the module whose own database this is (phase 3)
    # Phase 3, on the main backup: {module: file} of the module databases backed up with it.
    parts: dict[str, str] = field(default_factory=dict)

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"


def manifest_path(backup: Path) -> Path:
    return backup.with_name(backup.name + ".json")


def _private_file(path: Path) -> Path:
    """Create `path` empty, readable and writable by this user only (0600), whatever the
    umask: backups hold password hashes and every user's data."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.chmod(path, 0o600)  # O_CREAT's mode is masked by the umask; this is not
    return path


def _private_dir(path: Path) -> Path:
    """The backup folder, created or tightened to 0700 (this user only)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _write_manifest(m: Manifest, backup: Path) -> None:
    tmp = _private_file(manifest_path(backup).with_suffix(".json.partial"))
    tmp.write_text(json.dumps(asdict(m), indent=2, sort_keys=True))
    os.replace(tmp, manifest_path(backup))


def read_manifest(backup: Path) -> Manifest | None:
    try:
        return Manifest(**json.loads(manifest_path(backup).read_text()))
    except (OSError, ValueError, TypeError):
        return None


# --- SQLite --------------------------------------------------------------------------


def _sqlite_file(url: str) -> Path:
    parsed = make_url(url)
    return Path(parsed.database or "")


def _sqlite_verify(path: Path) -> tuple[dict[str, int], str | None]:
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
    """`name` or `schema.name` (module schemas, phase 2) as a quoted SQL identifier."""
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


def _sqlite_backup(url: str, target: Path) -> None:
    """Copy with the online backup API: a consistent snapshot while writers go on."""
    source = _sqlite_file(url)
    if not source.exists():
        raise BackupError(f"the database file {source} does not exist")
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(_private_file(target))
    try:
        src.backup(dst, pages=-1)  # one step: the copy is a single consistent snapshot
        dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
    finally:
        dst.close()
        src.close()


# --- PostgreSQL ----------------------------------------------------------------------


def _libpq_url(url: str) -> str:
    """The URL pg_dump/psql understand (no SQLAlchemy driver suffix), password included:
    for psycopg in this process only, never for a command line."""
    return (
        make_url(normalise_url(url))
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


def _libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """(the URL without its password, the child's environment with PGPASSWORD): a password
    on a command line is visible to every user of the host (ps, /proc/<pid>/cmdline)."""
    parsed = make_url(normalise_url(url)).set(drivername="postgresql")
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    return parsed._replace(password=None).render_as_string(hide_password=False), env


def _run(args: list[str], what: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
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


def _pg_scratch_restore(url: str, dump: Path) -> tuple[dict[str, int], str | None]:
    """Restore the dump into a scratch database, count its rows, drop it."""
    import psycopg

    base = make_url(_libpq_url(url))
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
        target, env = _libpq_target(scratch_url)
        _run(
            ["pg_restore", "--no-owner", "--exit-on-error", "-d", target, str(dump)],
            "a verification restore",
            env,
        )
        with psycopg.connect(scratch_url) as conn:
            return _contents(conn, [r[0] for r in conn.execute(PG_TABLES_SQL)])
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


# --- the operations ------------------------------------------------------------------


def backend_of(url: str) -> str:
    return make_url(normalise_url(url)).get_backend_name()


def _suffix(url: str) -> str:
    return ".db" if backend_of(url) == "sqlite" else ".dump"


MAIN_BACKUP = re.compile(r"backup-\d{8}T\d{9}Z\.(db|dump)")


def create(
    url: str,
    backup_dir: Path,
    now: datetime | None = None,
    module_urls: dict[str, str] | None = None,
) -> Manifest:
    """Back up every database the service uses: the main one, and in phase 3 each module's
    own (`backup-<stamp>-<module>.<ext>`, listed in the main manifest's `parts`).

    Module databases are backed up first: everything they hold came from events committed
    in the main database before, so the main backup (taken after) has the source of all of
    it; events the module had not applied yet are sent again after a restore (`restore`).
    """
    now = now or datetime.now(UTC)
    _private_dir(backup_dir)
    stamp = _stamp(now)
    parts = {}
    for module, module_url in sorted((module_urls or {}).items()):
        part = backup_dir / f"backup-{stamp}-{module}{_suffix(module_url)}"
        _create_one(module_url, part, now, database=module)
        parts[module] = part.name
    return _create_one(url, backup_dir / f"backup-{stamp}{_suffix(url)}", now, parts=parts)


def _create_one(
    url: str,
    final: Path,
    now: datetime,
    *,
    database: str = "main",
    parts: dict[str, str] | None = None,
) -> Manifest:
    """Make one database's backup, verify it, and only then give it its final name and
    manifest."""
    backend = backend_of(url)
    partial = final.with_name(final.name + ".partial")
    try:
        if backend == "sqlite":
            _sqlite_backup(url, partial)
            counts, revision = _sqlite_verify(partial)
            how = "integrity_check"
        else:
            _pg_reachable(url)
            target, env = _libpq_target(url)
            _run(
                ["pg_dump", "-Fc", "--no-owner", "-f", str(_private_file(partial)), target],
                "pg_dump",
                env,
            )
            counts, revision = _pg_scratch_restore(url, partial)
            how = "restored into a scratch database"
        os.replace(partial, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    manifest = Manifest(
        file=final.name,
        backend=backend,
        created_at=now.isoformat(),
        size=final.stat().st_size,
        sha256=_sha256(final),
        row_counts=counts,
        revision=revision,
        verified=how,
        database=database,
        parts=dict(parts or {}),
    )
    _write_manifest(manifest, final)
    return manifest


def list_backups(backup_dir: Path) -> list[tuple[Path, Manifest | None]]:
    """Backups newest first, each with its manifest (None: unfinished or foreign file)."""
    if not backup_dir.exists():
        return []
    # The main database's backups; a module's (phase 3) belongs to the main one beside it.
    files = [p for p in backup_dir.iterdir() if MAIN_BACKUP.fullmatch(p.name)]
    return sorted(((p, read_manifest(p)) for p in files), key=lambda x: x[0].name, reverse=True)


def verify(
    path: Path, url: str | None = None, module_urls: dict[str, str] | None = None
) -> Manifest:
    """Check a backup again — and the module databases' backups that belong to it:
    checksum against its manifest, and integrity/restorability."""
    manifest = _verify_one(path, url)
    for module, part in manifest.parts.items():
        _verify_one(path.with_name(part), (module_urls or {}).get(module, url))
    return manifest


def _verify_one(path: Path, url: str | None) -> Manifest:
    if not path.exists():
        raise BackupError(f"{path} is missing")
    manifest = read_manifest(path)
    if manifest is None:
        raise BackupError(f"{path}: no manifest; not a finished backup")
    if _sha256(path) != manifest.sha256:
        raise BackupError(f"{path}: checksum differs from its manifest (the file changed)")
    if manifest.backend == "sqlite":
        counts, _ = _sqlite_verify(path)
    else:
        if url is None:
            raise BackupError(
                "verifying a PostgreSQL dump needs DATABASE_URL (for a scratch database)"
            )
        counts, _ = _pg_scratch_restore(url, path)
    if counts != manifest.row_counts:
        raise BackupError(f"{path}: row counts differ from its manifest")
    return manifest


def _pg_reachable(url: str) -> None:
    """Connect once, so a database that is missing or out of reach is psycopg's one-line
    error (the CLI reports it as such), not pg_dump's paragraph."""
    import psycopg

    psycopg.connect(_libpq_url(url), connect_timeout=10).close()


def restore(
    path: Path,
    url: str,
    *,
    force: bool,
    now: datetime | None = None,
    module_urls: dict[str, str] | None = None,
    schemas: bool = False,
) -> str:
    """Restore a verified backup into the live databases, each in place and in ONE
    transaction, so a running service carries on with the restored data: nothing it
    acknowledges after the restore is lost. Refuses to overwrite a database that has data
    unless `force`; each replaced database is kept (copied just before).

    Phase 3: the module databases of the backup are restored first, then the main one;
    then every event of the main outbox that a module's inbox does not hold is marked to
    be sent again, so the two agree once the relay has run. Says which it restored.
    """
    module_urls = module_urls or {}
    manifest = verify(path, url, module_urls)
    now = now or datetime.now(UTC)
    missing = sorted(set(manifest.parts) - set(module_urls))
    if missing:
        raise BackupError(
            f"{path.name} includes the database of {', '.join(missing)}; set "
            + ", ".join(f"{m.upper()}_DATABASE_URL" for m in missing)
            + " to restore it with the main one"
        )
    said = []
    for module, part in sorted(manifest.parts.items()):
        said.append(
            f"{module}: " + _restore_one(path.with_name(part), module_urls[module], force, now)
        )
    said.append(("main: " if manifest.parts else "") + _restore_one(path, url, force, now))
    for module in sorted(set(module_urls) - set(manifest.parts)):
        said.append(f"{module}: not in this backup, left as it is")
    if manifest.parts:
        resent = resend_unapplied_events(url, {m: module_urls[m] for m in manifest.parts}, schemas)
        said.append(f"{resent} event(s) will be sent again to {', '.join(sorted(manifest.parts))}")
    return "; ".join(said)


def _restore_one(path: Path, url: str, force: bool, now: datetime) -> str:
    manifest = read_manifest(path)
    assert manifest is not None  # verified
    if manifest.backend != backend_of(url):
        raise BackupError(
            f"{path} is a {manifest.backend} backup; its database is {backend_of(url)}"
        )
    if manifest.backend == "sqlite":
        return _sqlite_restore(path, url, force=force, now=now)
    return _pg_restore(path, url, force=force, now=now)


def resend_unapplied_events(url: str, module_urls: dict[str, str], schemas: bool) -> int:
    """Mark every event of the main outbox that a module's inbox does not hold as not yet
    published, so the relay sends it again (inboxes absorb any duplicate)."""
    from sqlalchemy import select, update

    from app.kernel.db import EngineSettings, make_engine
    from app.kernel.models import InboxEvent, OutboxEvent
    from app.kernel.ownership import OPERATOR, acting_as

    def engine(u: str) -> Any:
        return make_engine(EngineSettings(url=u, pool_size=1, schemas=schemas))

    main = engine(url)
    try:
        with acting_as(OPERATOR), main.connect() as conn:
            outbox = set(conn.scalars(select(OutboxEvent.event_id)))
        unapplied: set[str] = set()
        for module, module_url in module_urls.items():
            other = engine(module_url)
            try:
                with acting_as(OPERATOR), other.connect() as conn:
                    applied = set(
                        conn.scalars(
                            select(InboxEvent.event_id).where(InboxEvent.consumer == module)
                        )
                    )
            finally:
                other.dispose()
            unapplied |= outbox - applied
        ids = sorted(unapplied)
        with acting_as(OPERATOR), main.begin() as conn:
            for i in range(0, len(ids), 500):
                conn.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.event_id.in_(ids[i : i + 500]))
                    .values(published_at=None, stream_ref=None, confirmed_at=None)
                )
        return len(ids)
    finally:
        main.dispose()


def _sqlite_restore(path: Path, url: str, *, force: bool, now: datetime) -> str:
    target = _sqlite_file(url)
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} does not exist (the folder of DATABASE_URL)")
    has_data = target.exists() and target.stat().st_size > 0
    if has_data and not force:
        raise BackupError(f"{target} exists; pass --force to replace it (it will be kept)")
    kept = None
    if has_data:
        kept = target.with_name(f"{target.name}.replaced-{_stamp(now)}")
        _sqlite_backup(f"sqlite:///{target}", kept)  # a consistent copy, WAL included
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


def _pg_restore(path: Path, url: str, *, force: bool, now: datetime) -> str:
    import psycopg

    with psycopg.connect(_libpq_url(url), connect_timeout=10) as conn:
        has_tables = conn.execute(
            "SELECT count(*) FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()[0]
    target, env = _libpq_target(url)
    kept_note = ""
    if has_tables:
        if not force:
            raise BackupError(
                "the database has tables; pass --force to replace it (it will be dumped first)"
            )
        kept = _private_file(path.parent / f"replaced-{_stamp(now)}.dump")
        _run(
            ["pg_dump", "-Fc", "--no-owner", "-f", str(kept), target],
            "dumping the replaced database",
            env,
        )
        kept_note = f"; the replaced database was dumped to {kept}"
    # One transaction: the running service's connections see the old tables until the
    # commit and the restored ones after it; a statement that waited on a dropped table
    # fails (it was not acknowledged). Any error rolls the whole restore back.
    _run(
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


def prune(backup_dir: Path, keep_days: int, now: datetime | None = None) -> list[Path]:
    """Delete backups older than `keep_days`; the newest verified backup is always kept."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=keep_days)
    backups = list_backups(backup_dir)
    newest_good = next((p for p, m in backups if m is not None), None)
    removed = []
    for path, manifest in backups:
        if path == newest_good:
            continue
        created = (
            manifest.created if manifest else datetime.fromtimestamp(path.stat().st_mtime, UTC)
        )
        if created < cutoff:
            for file in [
                path,
                *(path.with_name(p) for p in (manifest.parts if manifest else {}).values()),
            ]:
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()
                with contextlib.suppress(FileNotFoundError):
                    manifest_path(file).unlink()
            removed.append(path)
    return removed
