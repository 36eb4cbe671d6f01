"""`flask outbox …`: relay the outbox to Redis and consume it (phase 3), and look after it.

Thin shells over the services in this package (ADR 0004, docs/phases.md).
"""

from __future__ import annotations

from typing import Any

import click
from flask import current_app

from app.kernel.cli import OperatorGroup, parse_age, until_signalled, writes
from app.kernel.db import get_database, transaction, utcnow
from app.kernel.events import inbox, outbox
from app.kernel.events.consumer import EventConsumer
from app.kernel.events.relay import OutboxRelay
from app.kernel.ownership import OPERATOR, acting_as, registry

outbox_cli = OperatorGroup("outbox", help="The event outbox: relay it to Redis, consume it.")


def _redis() -> Any:
    import redis

    url = current_app.config.get("REDIS_URL")
    if not url:
        raise click.ClickException("REDIS_URL is not set: the outbox is relayed through Redis")
    return redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=2, socket_timeout=10
    )


@outbox_cli.command("relay")
@click.option("--once", is_flag=True, help="One round (publish, confirm), then exit.")
@click.option("--interval", default=0.5, show_default=True, type=click.FloatRange(0.01, 60))
@writes(at_start=True)
def outbox_relay(once: bool, interval: float) -> None:
    """Publish outbox events to the Redis stream, oldest first, and confirm delivered ones.

    Run one (or, for availability, two: the second waits on the lease and takes over) per
    deployment. Stops cleanly on SIGTERM.
    """
    config = current_app.config
    groups = sorted(config["MODULE_DATABASE_URLS"])
    if not groups:
        raise click.ClickException(
            "no module has a database of its own (ADMIN_DATABASE_URL), so no consumer group "
            "would acknowledge the events: nothing to relay to"
        )
    relay = OutboxRelay(
        get_database().sessions_for("kernel"),
        _redis(),
        stream=config["OUTBOX_STREAM"],
        groups=groups,
        batch_size=config["OUTBOX_BATCH_SIZE"],
        lease_seconds=config["OUTBOX_LEASE_SECONDS"],
    )
    if once:
        try:
            report = relay.run_once()
        finally:
            relay.release()
        state = "relayed" if report.leader else "standby (another relay holds the lease)"
        click.echo(
            f"{state}: published {report.published}, confirmed {report.confirmed}, "
            f"re-published {report.republished}"
        )
        return
    click.echo(f"relaying to {config['OUTBOX_STREAM']} as {relay.holder}", err=True)
    with until_signalled() as stop:
        relay.run(interval=interval, stop=stop)


@outbox_cli.command("consume")
@click.argument("module")
@click.option(
    "--name", default=None, help="Consumer name, stable across restarts (default: the host name)."
)
@click.option("--until-idle", is_flag=True, help="Exit once there is nothing left to read.")
@click.option("--block-ms", default=1000, show_default=True, type=click.IntRange(10, 60_000))
@writes(at_start=True)
def outbox_consume(module: str, name: str | None, until_idle: bool, block_ms: int) -> None:
    """Apply the stream's events for MODULE (its consumer group), each exactly once.

    Keep the name stable across restarts: a restarted consumer first finishes the entries
    it had received but not acknowledged. Stops cleanly on SIGTERM.
    """
    if module not in registry.schemas() or not inbox.handlers_of(module):
        raise click.ClickException(f"{module!r} consumes no events")
    consumer = EventConsumer(
        module,
        get_database().sessions_for(module),
        _redis(),
        stream=current_app.config["OUTBOX_STREAM"],
        name=name,
        block_ms=block_ms,
    )
    if until_idle:
        handled = 0
        try:
            while count := consumer.poll_once():
                handled += count
        finally:
            consumer.release()
        if consumer.waiting:
            raise click.ClickException(
                f"handled {handled} event(s); another consumer of {module} holds the lock"
            )
        click.echo(f"handled {handled} event(s); nothing left to read")
        return
    click.echo(f"consuming {consumer.stream} as {consumer.group}/{consumer.name}", err=True)
    with until_signalled() as stop:
        consumer.run(stop=stop)


@outbox_cli.command("dead-letters")
@click.argument("module")
@click.option("--retry", is_flag=True, help="Apply them again; those that succeed are removed.")
@writes
def outbox_dead_letters(module: str, retry: bool) -> None:
    """Events MODULE's consumer set aside after failing to apply them (in its database)."""
    session = get_database().sessions_for(module)()
    with session, acting_as(module):
        letters = inbox.dead_letters(session, module)
        if not letters:
            click.echo("no dead letters")
            return
        if not retry:
            for letter in letters:
                line = f"{letter.failed_at.isoformat()} {letter.event_id} {letter.event_type}"
                click.echo(f"{line}: {letter.error}")
            return
        for retried in inbox.retry_dead_letters(session, module, letters):
            line = f"{retried.failed_at.isoformat()} {retried.event_id} {retried.event_type}"
            if retried.error is None:
                click.echo(f"{line}: applied")
            else:
                click.echo(f"{line}: failed again: {str(retried.error).splitlines()[0]}")


@outbox_cli.command("status")
def outbox_status() -> None:
    """How many events wait to be published, and how many to be confirmed."""
    with acting_as(OPERATOR):
        session = get_database().sessions_for("kernel")()
        with session:
            status = outbox.outbox_status(session)
    oldest = status.oldest_unconfirmed
    click.echo(
        f"unpublished {status.unpublished}, unconfirmed {status.unconfirmed}, oldest unconfirmed "
        f"{oldest.isoformat() if oldest else '-'}"
    )


@outbox_cli.command("prune")
@click.option("--older-than", "older_than", default="7d", show_default=True)
@writes
def outbox_prune(older_than: str) -> None:
    """Delete events confirmed longer ago than --older-than (they were delivered).

    Without a module on its own database (phases 1 and 2) nothing consumes the outbox, so
    events older than that are deleted whatever their state: the tables they describe are
    the record.
    """
    cutoff = utcnow() - parse_age(older_than)
    relayed = bool(current_app.config["MODULE_DATABASE_URLS"])
    session = get_database().sessions_for("kernel")()
    with session, acting_as(OPERATOR), transaction(session):
        removed = outbox.prune_outbox(session, cutoff, relayed=relayed)
    what = "confirmed" if relayed else "old (nothing consumes them in this phase)"
    click.echo(f"pruned {removed} {what} event(s)")
