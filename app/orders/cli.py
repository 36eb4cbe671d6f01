"""Orders' operator commands: `flask --app wsgi subscriptions …` and `orders …`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from flask import current_app

from app.kernel.cli import OperatorError, OperatorGroup, describe_failure, writes
from app.kernel.db import get_session

subscriptions_cli = OperatorGroup("subscriptions", help="Subscription renewals.")
orders_cli = OperatorGroup("orders", help="Orders left unfinished.")


@subscriptions_cli.command("renew")
@writes
def subscriptions_renew() -> None:
    """Charge due subscriptions and extend them (cron, e.g. hourly).

    A declined charge makes the subscription past due; past-due subscriptions beyond
    RENEWAL_GRACE_DAYS end and their licenses are suspended. Running it twice at once, or
    twice in a row, charges nobody twice.
    """
    from app.orders import api as orders_api

    _run(
        orders_api.renew_due_subscriptions,
        _echo_renewal,
        lambda _stopped: "renewal stopped (the next run renews the rest)",
    )


@orders_cli.command("recover")
@writes
def orders_recover() -> None:
    """Finish purchases left pending after their lease ended (cron, every minute).

    A purchase whose attempt died after the charge (the database went away, the process
    was killed) is settled — or refunded — exactly as a retry with its Idempotency-Key
    would: it is never charged twice. Several hosts may run it at once.
    """
    from app.orders import api as orders_api

    _run(
        orders_api.recover_pending_orders,
        _echo_recovery,
        lambda stopped: _still_pending(stopped.pending),
    )


def _run(job: Callable[..., Any], echo: Callable[[Any], None], left: Callable[[Any], str]) -> None:
    """Run a cron job and print its report. If the database went away mid-run: what it did
    until then, and one line with the cause and `left(stopped)` (what the next run takes
    up). Problems that need an operator fail the job (cron mails it)."""
    from app.orders import api as orders_api

    try:
        report = job(get_session(), current_app)
    except orders_api.RunInterrupted as stopped:
        echo(stopped.report)
        cause = describe_failure(stopped.cause, current_app.config["DATABASE_URL"])
        raise OperatorError(f"{cause}; {left(stopped)}") from None
    echo(report)
    if report.problems:
        raise click.ClickException("; ".join(report.problems))


def _echo_renewal(report: Any) -> None:
    charged = (
        ", ".join(f"{cents / 100:.2f} {cur}" for cur, cents in report.charged_cents.items())
        or "nothing"
    )
    click.echo(
        f"renewed {report.renewed}, failed {report.failed}, skipped {report.skipped}, "
        f"lapsed {report.lapsed}; charged {charged}"
    )


def _echo_recovery(report: Any) -> None:
    click.echo(
        f"settled {report.settled}, refunded {report.refunded}, failed {report.failed}, "
        f"skipped {report.skipped}"
    )


def _still_pending(order_ids: list[str], shown: int = 10) -> str:
    """'N orders still pending (…): ids' — the first `shown` ids, on one line."""
    more = f" and {len(order_ids) - shown} more" if len(order_ids) > shown else ""
    ids = ", ".join(order_ids[:shown]) + more
    count = len(order_ids)
    return f"recovery stopped, {count} orders still pending (the next run retries them): {ids}"


def init_app(app: Any) -> None:
    app.cli.add_command(subscriptions_cli)
    app.cli.add_command(orders_cli)
