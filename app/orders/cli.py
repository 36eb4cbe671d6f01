"""Orders' operator commands: `flask --app wsgi subscriptions …`."""

from __future__ import annotations

from typing import Any

import click
from flask import current_app

from app.kernel.cli import OperatorGroup, writes
from app.kernel.db import get_session

subscriptions_cli = OperatorGroup("subscriptions", help="Subscription renewals.")


@subscriptions_cli.command("renew")
@writes
def subscriptions_renew() -> None:
    """Charge due subscriptions and extend them (cron, e.g. hourly).

    A declined charge makes the subscription past due; past-due subscriptions beyond
    RENEWAL_GRACE_DAYS end and their licenses are suspended. Running it twice at once, or
    twice in a row, charges nobody twice.
    """
    from app.orders import api as orders_api

    report = orders_api.renew_due_subscriptions(get_session(), current_app)
    charged = (
        ", ".join(f"{cents / 100:.2f} {cur}" for cur, cents in report.charged_cents.items())
        or "nothing"
    )
    click.echo(
        f"renewed {report.renewed}, failed {report.failed}, skipped {report.skipped}, "
        f"lapsed {report.lapsed}; charged {charged}"
    )
    if report.problems:  # cron mails a failing job: say what needs an operator
        raise click.ClickException("; ".join(report.problems))


def init_app(app: Any) -> None:
    app.cli.add_command(subscriptions_cli)
