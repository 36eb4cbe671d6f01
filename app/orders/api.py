"""orders' public facade: the only thing other modules (and the CLI) may import from orders."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.kernel.ownership import acting_as
from app.orders import MODULE, workflows
from app.orders.events import OrderPaid, OrderRefunded
from app.orders.payments import gateway_of
from app.orders.plans import catalog_of

RenewalReport = workflows.RenewalReport
RecoveryReport = workflows.RecoveryReport
RunInterrupted = workflows.RunInterrupted

# The events orders publishes (docs/events.md).
__all__ = [
    "OrderPaid",
    "OrderRefunded",
    "RecoveryReport",
    "RenewalReport",
    "RunInterrupted",
    "recover_pending_orders",
    "renew_due_subscriptions",
]


def renew_due_subscriptions(session: Session, app: Any) -> RenewalReport:
    """Run the renewal workflow with the app's payment provider and catalog.

    It owns its transactions (money moves between them), so it is an entry point, not a
    function to call inside someone else's transaction.
    """
    cfg = app.config
    with acting_as(MODULE):
        return workflows.renew_due(
            session,
            gateway_of(app),
            catalog_of(app),
            grace=cfg["RENEWAL_GRACE"],
            lease=cfg["ORDER_LEASE"],
            lead=cfg["RENEWAL_LEAD"],
        )


def recover_pending_orders(session: Session, app: Any) -> RecoveryReport:
    """Finish the purchases whose attempt died after its claim, once their lease has ended
    (an entry point that owns its transactions, like the renewals). A database gone away
    stops the run: RunInterrupted."""
    with acting_as(MODULE):
        settings = workflows.Settings(lease=app.config["ORDER_LEASE"])
        return workflows.recover_pending(session, gateway_of(app), catalog_of(app), settings)
