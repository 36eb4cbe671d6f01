"""Recovering purchases whose attempt died after it claimed its Idempotency-Key.

A purchase whose settlement could not be written (the database went away after the
charge, or the process was killed) stays `pending` with its key `in_progress`. A retry with
the same key takes it over once the lease ends; `flask orders recover` (cron) does the same
for clients that never retry. These are the steps; `workflows.recover_pending` runs them.
Plain Python: every function takes a Session and never commits.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.orders.models import IdempotencyKey, Order
from app.orders.service import audit_order


def stale_purchases(session: Session, *, now: datetime, limit: int) -> list[str]:
    """The ids of pending purchases whose key's lease has ended, oldest lease first.
    Pending orders are few, so the status index finds them whatever the tables' size."""
    stmt = (
        select(Order.order_id)
        .join(IdempotencyKey, IdempotencyKey.order_id == Order.order_id)
        .where(
            Order.status == "pending",
            IdempotencyKey.state == "in_progress",
            IdempotencyKey.locked_until <= now,
        )
        .order_by(IdempotencyKey.locked_until)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def take_over(session: Session, order_id: str, *, lease: timedelta, now: datetime) -> Order | None:
    """The order, its key's lease taken for this run (audited ORDER_RECOVERY); None when a
    retry or another run holds it, or it has been settled since it was listed."""
    key = session.scalar(
        select(IdempotencyKey)
        .where(IdempotencyKey.order_id == order_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if key is None or key.state != "in_progress" or key.locked_until > now:
        return None
    order = session.get(Order, order_id, populate_existing=True)
    if order is None or order.status != "pending":
        return None
    stale_since = key.locked_until
    key.locked_until = now + lease  # a same-key retry now waits for this run, as for any other
    audit_order(
        session,
        order,
        "ORDER_RECOVERY",
        actor_id=None,
        details={"lease_ended_at": stale_since.isoformat()},
    )
    return order
