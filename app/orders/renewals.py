"""Renewal orders: each due subscription is charged again for one period, as an order.

A renewal is claimed (one transaction: a pending renewal order), charged, then settled
(the subscription renewed through auth.api, audited) or failed (the subscription past due).
`workflows.renew_due` drives them. Plain Python: every function takes a Session and never
commits.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.admin import api as admin_api
from app.auth import api as auth_api
from app.orders.models import Order
from app.orders.payments import Charge
from app.orders.plans import Plan
from app.orders.service import mark_paid, new_order


def last_payment_method(session: Session, user_id: str) -> str | None:
    return session.scalar(
        select(Order.payment_method)
        .where(Order.user_id == user_id, Order.status.in_(("paid", "cancelled")))
        .order_by(Order.order_id.desc())
        .limit(1)
    )


def claim_renewal(
    session: Session, sub: Any, plan: Plan, *, lease: timedelta, now: datetime
) -> Order | None:
    """The pending renewal order for this subscription's period, claimed by this run; None
    when another run holds it or the period is already settled."""
    renewal_key = f"{sub.subscription_id}:{sub.renews_at.isoformat()}"
    existing = session.scalar(
        select(Order).where(Order.renewal_key == renewal_key).with_for_update()
    )
    if existing is not None:
        if existing.status != "pending" or existing.updated_at > now - lease:
            return None
        existing.updated_at = now  # take over an attempt whose run died
        return existing
    method = last_payment_method(session, sub.user_id)
    order = new_order(sub.user_id, "renewal", plan, sub.seats, method or "none", now)
    order.subscription_id, order.renewal_key = sub.subscription_id, renewal_key
    try:
        with session.begin_nested():  # added inside the savepoint, so a clash leaves no trace
            session.add(order)
            session.flush()
    except IntegrityError:
        return None  # a concurrent run inserted it first
    return order


def settle_renewal(session: Session, order_id: str, charge: Charge, sub: Any, plan: Plan) -> bool:
    """The renewal paid and the subscription extended, in one transaction. False when the
    subscription is no longer there to renew (cancelled, or renewed by another run since):
    then nothing is written and the caller refunds the charge."""
    order = session.get(Order, order_id, with_for_update=True, populate_existing=True)
    assert order is not None
    if order.status != "pending":
        return True
    renewed = auth_api.renew_subscription(
        session,
        sub.subscription_id,
        expected_renews_at=sub.renews_at,
        period=timedelta(days=plan.period_days),
        actor_id=order.order_id,
    )
    if renewed is None:
        return False
    mark_paid(
        session,
        order,
        charge,
        actor_id=None,
        details={"kind": "renewal", "subscription_id": sub.subscription_id},
    )
    return True


def fail_renewal(
    session: Session, order_id: str, sub: Any, *, failure_code: str, retry: bool
) -> None:
    """A declined renewal makes the subscription past due. With `retry` (provider down),
    the period's renewal key is freed so the next run tries again."""
    order = session.get(Order, order_id, with_for_update=True, populate_existing=True)
    assert order is not None
    order.status, order.failure_code = "failed", failure_code
    if retry:
        order.renewal_key = None
    order.version += 1
    session.flush()
    if not retry:
        auth_api.mark_subscription_past_due(session, sub.subscription_id, reason=failure_code)
    admin_api.record_audit(
        session,
        "RENEWAL_FAILED",
        user_id=order.user_id,
        details={
            "order_id": order.order_id,
            "subscription_id": sub.subscription_id,
            "failure_code": failure_code,
        },
    )
