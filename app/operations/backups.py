"""Verified backups: SQLite through the online backup API, PostgreSQL through pg_dump.

A backup counts only once it is verified: SQLite's copy passes `PRAGMA integrity_check`;
a PostgreSQL dump is restored into a scratch database. Each backup gets a manifest
(`<file>.json`: size, SHA-256, row counts, schema revision) written last, so a backup
without a manifest is an unfinished one and never counts. This file holds the operations
(create, list, verify, restore, prune); one copy per backend is made, checked and restored in
`backup_engines.py`, and `cli.py` is `flask backup …`.

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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from app.kernel.engines import normalise_url
from app.operations import backup_engines as engines
from app.operations.backup_engines import BackupError


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


def manifest_path(backup: Path) -> Path:
    return backup.with_name(backup.name + ".json")


def _private_dir(path: Path) -> Path:
    """The backup folder, created or tightened to 0700 (this user only)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _write_manifest(m: Manifest, backup: Path) -> None:
    tmp = engines.private_file(manifest_path(backup).with_suffix(".json.partial"))
    tmp.write_text(json.dumps(asdict(m), indent=2, sort_keys=True))
    os.replace(tmp, manifest_path(backup))


def read_manifest(backup: Path) -> Manifest | None:
    try:
        return Manifest(**json.loads(manifest_path(backup).read_text()))
    except (OSError, ValueError, TypeError):
        return None


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
    stamp = engines.stamp(now)
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
            engines.sqlite_backup(url, partial)
            counts, revision = engines.sqlite_verify(partial)
            how = "integrity_check"
        else:
            engines.pg_reachable(url)
            target, env = engines.libpq_target(url)
            engines.run(
                ["pg_dump", "-Fc", "--no-owner", "-f", str(engines.private_file(partial)), target],
                "pg_dump",
                env,
            )
            counts, revision = engines.pg_scratch_restore(url, partial)
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
        counts, _ = engines.sqlite_verify(path)
    else:
        if url is None:
            raise BackupError(
                "verifying a PostgreSQL dump needs DATABASE_URL (for a scratch database)"
            )
        counts, _ = engines.pg_scratch_restore(url, path)
    if counts != manifest.row_counts:
        raise BackupError(f"{path}: row counts differ from its manifest")
    return manifest


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
        return engines.sqlite_restore(path, url, force=force, now=now)
    return engines.pg_restore(path, url, force=force, now=now)


def resend_unapplied_events(url: str, module_urls: dict[str, str], schemas: bool) -> int:
    """Mark every event of the main outbox that a module consumes and its inbox does not
    hold as not yet published, so the relay sends it again (inboxes absorb any duplicate).
    Events of types no handler of the module takes (user.registered is for webhooks, say)
    are not the module's to miss."""
    from sqlalchemy import select, update

    from app.kernel.engines import EngineSettings, make_engine
    from app.kernel.events.inbox import handlers_of
    from app.kernel.models import InboxEvent, OutboxEvent
    from app.kernel.ownership import OPERATOR, acting_as

    def engine(u: str) -> Any:
        return make_engine(EngineSettings(url=u, pool_size=1, schemas=schemas))

    main = engine(url)
    try:
        with acting_as(OPERATOR), main.connect() as conn:
            rows = conn.execute(select(OutboxEvent.event_id, OutboxEvent.event_type))
            types_of = {row.event_id: row.event_type for row in rows}
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
            consumed = set(handlers_of(module))
            wanted = {e for e, t in types_of.items() if not consumed or t in consumed}
            unapplied |= wanted - applied
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
