"""Admin's operator commands: `flask --app wsgi audit …`."""

from __future__ import annotations

from typing import Any

import click

from app.kernel.cli import OperatorGroup, parse_age, writes
from app.kernel.db import get_database, transaction

audit_cli = OperatorGroup("audit", help="The audit log.")


@audit_cli.command("archive")
@click.option("--older-than", "older_than", default="90d", show_default=True, help="e.g. 90d, 12h")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--pause",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 60),
    help="Seconds to wait between batches, to leave room for other writers.",
)
@writes
def audit_archive(older_than: str, batch_size: int, pause: float) -> None:
    """Move audit entries older than --older-than into audit_logs_archive.

    Each batch is copied and deleted in one transaction, so an interrupted run loses
    nothing and leaves nothing twice; running it again finishes the job.
    """
    import time

    from app.admin import api as admin_api
    from app.kernel.db import utcnow

    cutoff = utcnow() - parse_age(older_than)
    # Where admin's tables are: the main database, or admin's own (phase 3).
    session = get_database().sessions_for("admin")()
    moved = 0
    while True:
        with session, transaction(session):
            count = admin_api.archive_audit_batch(session, cutoff, batch_size)
        if count == 0:
            break
        moved += count
        click.echo(f"archived {moved} entries so far", err=True)
        if pause:
            time.sleep(pause)
    click.echo(f"archived {moved} audit entries older than {cutoff.isoformat()}")


def init_app(app: Any) -> None:
    app.cli.add_command(audit_cli)
