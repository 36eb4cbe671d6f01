"""Cancelling an order: the charge is refunded and the subscription it backs ends.

Three steps, like placing one, so that money never moves inside a database transaction:
begin (one transaction: only the order that backs the live subscription, ADR 0006, becomes
`cancelling`), refund the charge, finish (one transaction: the subscription ended through
auth.api if the order still backs it, the order `cancelled`, audited, its event published)
— or, when the refund fails, revert. Plain Python: every function takes a Session and never
commits.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.auth import api as auth_api
from app.kernel import events
from app.kernel.db import utcnow
from app.orders.events import OrderRefunded
from app.orders.models import Order
from app.orders.payments import Refund
from app.orders.service import OrderNotCancellable, OrderNotFound, OrderSuperseded, audit_order


def backing_order(session: Session, subscription_id: str) -> Order | None:
    """The order a subscription's plan, seats and period come from: its latest settled
    order that is paid (or being cancelled). Earlier ones are superseded (ADR 0006)."""
    return session.scalar(
        select(Order)
        .where(
            Order.subscription_id == subscription_id,
            Order.status.in_(("paid", "cancelling")),
            Order.settled_at.is_not(None),
        )
        .order_by(Order.settled_at.desc(), Order.order_id.desc())
        .limit(1)
    )


def _check_backs_its_subscription(session: Session, order: Order, renewal_lead: timedelta) -> None:
    """Only the order that backs the user's live subscription may be cancelled."""
    live = auth_api.live_subscription(session, order.user_id)
    if live is None or live.subscription_id != order.subscription_id:
        raise OrderNotCancellable(
            "This order's subscription has ended; there is nothing left to cancel."
        )
    if live.status != "active" or live.renews_at - renewal_lead <= utcnow():
        # The period it paid for is used up: its renewal is due (the renewal job charges
        # this early) or was declined. The same answer whether or not the job has run.
        raise OrderNotCancellable("The period this order paid for is over; it is not refunded.")
    backing = backing_order(session, live.subscription_id)
    if backing is not None and backing.order_id != order.order_id:
        raise OrderSuperseded(backing.order_id)


def begin_cancel(
    session: Session,
    order_id: str,
    *,
    user_id: str,
    is_admin: bool,
    renewal_lead: timedelta = timedelta(0),
) -> Order | None:
    """Mark the paid order that backs the user's live subscription `cancelling` (inside a
    write transaction). None when it is already cancelled (the caller answers with it as
    is). A superseded order is 409 `order_superseded`; one whose subscription has ended,
    409 `order_not_cancellable`."""
    order = session.get(Order, order_id, with_for_update=True, populate_existing=True)
    if order is None or (order.user_id != user_id and not is_admin):
        raise OrderNotFound()
    if order.status == "cancelled":
        return None
    if order.status not in ("paid", "cancelling"):
        raise OrderNotCancellable(f"A {order.status} order cannot be cancelled.")
    if order.status == "paid":
        auth_api.lock_account(session, order.user_id)  # no order of the user settles meanwhile
        _check_backs_its_subscription(session, order, renewal_lead)
    order.status = "cancelling"
    order.version += 1
    return order


def finish_cancel(session: Session, order_id: str, refund: Refund, *, actor_id: str) -> Order:
    """Refunded: the order cancelled and, if it still backs the subscription, the
    subscription ended (licenses above the free seats suspended, newest first), audited,
    announced — one transaction. If a later order settled between the two steps, that
    order's terms stand and the subscription is left alone."""
    order = session.get(Order, order_id, with_for_update=True, populate_existing=True)
    assert order is not None
    if order.status != "cancelling":
        return order  # a concurrent cancel finished it
    auth_api.lock_account(session, order.user_id)
    backing = backing_order(session, order.subscription_id) if order.subscription_id else None
    still_backing = backing is not None and backing.order_id == order.order_id
    order.status, order.refund_id = "cancelled", refund.refund_id
    order.version += 1
    session.flush()
    if still_backing:
        auth_api.cancel_subscription(
            session, order.user_id, actor_id=actor_id, subscription_id=order.subscription_id
        )
    audit_order(
        session,
        order,
        "ORDER_CANCELLED",
        actor_id=actor_id,
        details={"refund_id": refund.refund_id, "subscription_ended": still_backing},
    )
    events.publish(
        session,
        OrderRefunded(
            order_id=order.order_id,
            user_id=order.user_id,
            refund_id=refund.refund_id,
            amount_cents=refund.amount_cents,
            currency=order.currency,
            subscription_ended=still_backing,
        ),
        aggregate_version=order.version,
    )
    return order


def revert_cancel(session: Session, order_id: str) -> None:
    """The refund could not be made: the order is paid again."""
    session.execute(
        update(Order)
        .where(Order.order_id == order_id, Order.status == "cancelling")
        .values(status="paid")
    )
