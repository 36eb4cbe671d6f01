"""`flask webhooks deliver|status|prune`: thin shells over the delivery worker and service."""

from __future__ import annotations

from typing import Any

import click
from flask import current_app

from app.kernel.cli import OperatorGroup, parse_age, until_signalled, writes
from app.kernel.db import get_database, transaction, utcnow
from app.kernel.ownership import acting_as
from app.webhooks import MODULE, service
from app.webhooks.delivery import Deliverer

webhooks_cli = OperatorGroup("webhooks", help="Webhooks: deliver events to endpoints.")


@webhooks_cli.command("deliver")
@click.option("--once", is_flag=True, help="Post what is due now, then exit.")
@click.option("--name", default=None, help="Worker name (default: host and pid).")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.05, 60))
@click.option("--batch-size", default=20, show_default=True, type=click.IntRange(1, 500))
@click.option("--lease-seconds", default=60, show_default=True, type=click.IntRange(20, 3600))
@writes(at_start=True)
def deliver(
    once: bool, name: str | None, interval: float, batch_size: int, lease_seconds: int
) -> None:
    """Post due deliveries, signed; retry failures on the schedule. Several workers may run
    at once (each posts what it leased). Stops cleanly on SIGTERM."""
    worker = Deliverer(
        get_database().sessions_for(MODULE),
        current_app.config,
        name=name,
        batch_size=batch_size,
        lease_seconds=lease_seconds,
    )
    if once:
        posted = 0
        while count := worker.run_once():
            posted += count
        click.echo(f"posted {posted} delivery attempt(s)")
        return
    click.echo(f"delivering webhooks as {worker.name}", err=True)
    with until_signalled() as stop:
        worker.run(interval=interval, stop=stop)


@webhooks_cli.command("status")
def status() -> None:
    """How many deliveries are pending, and since when."""
    with acting_as(MODULE), get_database().sessions_for(MODULE)() as session:
        backlog = service.backlog(session)
    oldest = backlog.oldest_pending
    click.echo(f"pending {backlog.pending}, oldest {oldest.isoformat() if oldest else '-'}")


@webhooks_cli.command("prune")
@click.option("--older-than", "older_than", default="30d", show_default=True)
@writes
def prune(older_than: str) -> None:
    """Delete finished deliveries (succeeded or failed) older than --older-than. Safe to
    run from cron at any time, also beside running workers."""
    cutoff = utcnow() - parse_age(older_than)
    session = get_database().sessions_for(MODULE)()
    with session, acting_as(MODULE), transaction(session):
        removed = service.prune_deliveries(session, cutoff)
    click.echo(f"pruned {removed} finished delivery(ies)")


def init_app(app: Any) -> None:
    app.cli.add_command(webhooks_cli)
