"""Backup commands: `flask --app wsgi backup …` (the work is in app/operations/backups.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from flask import current_app

from app.kernel.cli import OperatorGroup, writes

backup_cli = OperatorGroup("backup", help="Verified backups: create, list, verify, restore, prune.")


def _backup_dir() -> Path:
    return Path(current_app.config["BACKUP_DIR"])


@contextmanager
def _backup_errors() -> Iterator[None]:
    from app.operations.backups import BackupError

    try:
        yield
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None


@backup_cli.command("create")
def backup_create() -> None:
    """Back up the database, verify the copy, record size, checksum and row counts."""
    from app.operations import backups

    with _backup_errors():
        manifest = backups.create(
            current_app.config["DATABASE_URL"],
            _backup_dir(),
            module_urls=current_app.config["MODULE_DATABASE_URLS"],
        )
    rows = sum(manifest.row_counts.values())
    click.echo(
        f"backup {_backup_dir() / manifest.file} size={manifest.size} rows={rows} "
        f"sha256={manifest.sha256[:16]} verified={manifest.verified!r}"
        + "".join(f" + {module}: {part}" for module, part in manifest.parts.items())
    )


@backup_cli.command("list")
def backup_list() -> None:
    """Backups, newest first."""
    from app.operations import backups

    for path, manifest in backups.list_backups(_backup_dir()):
        if manifest is None:
            click.echo(f"{path.name}  UNVERIFIED (no manifest)")
        else:
            rows = sum(manifest.row_counts.values())
            with_parts = "".join(f"  + {module}: {part}" for module, part in manifest.parts.items())
            click.echo(
                f"{path.name}  {manifest.size} bytes  {rows} rows  revision {manifest.revision}"
                + with_parts
            )


@backup_cli.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def backup_verify(file: Path) -> None:
    """Check a backup against its manifest, and its integrity (SQLite) or restorability."""
    from app.operations import backups

    with _backup_errors():
        manifest = backups.verify(
            file, current_app.config["DATABASE_URL"], current_app.config["MODULE_DATABASE_URLS"]
        )
    click.echo(f"{file.name}: ok ({sum(manifest.row_counts.values())} rows, {manifest.verified})")


@backup_cli.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace a database that has data (it is kept).")
@writes
def backup_restore(file: Path, force: bool) -> None:
    """Restore a verified backup in place (gunicorn may keep running); in phase 3 with
    admin's database."""
    from app.operations import backups

    with _backup_errors():
        click.echo(
            backups.restore(
                file,
                current_app.config["DATABASE_URL"],
                force=force,
                module_urls=current_app.config["MODULE_DATABASE_URLS"],
                schemas=bool(current_app.config["DB_SCHEMAS"]),
            )
        )


@backup_cli.command("prune")
@click.option("--keep-days", default=30, show_default=True, type=click.IntRange(0))
def backup_prune(keep_days: int) -> None:
    """Delete backups older than --keep-days; the newest verified one is always kept."""
    from app.operations import backups

    removed = backups.prune(_backup_dir(), keep_days)
    click.echo(f"pruned {len(removed)} backup(s)")


def init_app(app: Any) -> None:
    app.cli.add_command(backup_cli)
