"""orders' business logic. Plain Python: every function takes a Session and never commits.

Placing an order is three steps, so that money never moves inside a database transaction:
1. claim (one transaction): the Idempotency-Key row and a pending order;
2. charge the payment provider (idempotent by order id);
3. settle (one transaction): the order paid, the subscription granted (auth.api), the
   audit entry (admin.api) and the `order.paid` event (kernel.events) — or, if that fails,
   refund the charge (compensation) and record that.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.admin import api as admin_api
from app.auth import api as auth_api
from app.kernel import events
from app.kernel.db import utcnow
from app.kernel.errors import Conflict, NotFound, ProblemError
from app.kernel.ids import new_id
from app.kernel.pagination import newest_first, page_of
from app.orders.events import OrderPaid, OrderRefunded
from app.orders.models import IdempotencyKey, Order
from app.orders.payments import Charge, Refund
from app.orders.plans import Plan


class UnknownPlan(ProblemError):
    status, code = 422, "unknown_plan"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"

    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was used with a different request body.")


class IdempotencyInProgress(Conflict):
    code = "idempotency_in_progress"

    def __init__(self) -> None:
        super().__init__(
            "A request with this Idempotency-Key is still being processed; retry shortly.",
            headers={"Retry-After": "1"},
        )


class OrderNotFound(NotFound):
    code = "order_not_found"

    def __init__(self) -> None:
        super().__init__("No such order.")


class OrderNotCancellable(Conflict):
    code = "order_not_cancellable"


class OrderSuperseded(Conflict):
    """A later order changed or renewed the subscription: this one no longer backs it, so
    cancelling it cannot end it (ADR 0006)."""

    code = "order_superseded"

    def __init__(self, backing_order_id: str) -> None:
        super().__init__(
            "A later order now backs this subscription; cancel that one instead.",
            backing_order_id=backing_order_id,
        )


@dataclass(frozen=True)
class OrderRequest:
    plan: str
    seats: int
    payment_method: str

    def fingerprint(self) -> str:
        canonical = json.dumps(
            {"plan": self.plan, "seats": self.seats, "payment_token": self.payment_method},
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def price(plan: Plan, seats: int) -> int:
    """The order amount in minor units: exact integer arithmetic."""
    return plan.price_cents * seats


def order_body(order: Order) -> dict[str, Any]:
    """The API representation of an order (also what an idempotent replay returns)."""
    return {
        "order_id": order.order_id,
        "user_id": order.user_id,
        "plan": order.plan,
        "seats": order.seats,
        "amount_cents": order.amount_cents,
        "currency": order.currency,
        "status": order.status,
        "subscription_id": order.subscription_id,
        "created_at": order.created_at.isoformat().replace("+00:00", "Z"),
    }


# --- 1. claim -------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """Exactly one of: an order this request must pay for, a stored response to replay,
    or neither (another request holds the key right now: wait and ask again)."""

    order: Order | None = None
    replay: tuple[int, dict[str, Any]] | None = None


def claim(
    session: Session,
    user_id: str,
    key: str,
    request: OrderRequest,
    plan: Plan,
    *,
    lease: timedelta,
    now: datetime | None = None,
) -> Claim:
    """Claim the Idempotency-Key for this request (inside a write transaction).

    The key's primary key (user, key) settles racing retries: one inserts, the others
    find its row. A key whose attempt died (its lease ran out) is taken over, with the
    same order, so the provider's idempotency returns the same charge.
    """
    now = now or utcnow()
    row = session.get(IdempotencyKey, (user_id, key), with_for_update=True, populate_existing=True)
    if row is not None and row.state == "released":
        # Its last attempt charged nothing (or was refunded): the key may try again, for the
        # same order — another card is fine, another plan or seat count is another request.
        failed = session.get(Order, row.order_id)
        if failed is None or (failed.plan, failed.seats) != (request.plan, request.seats):
            raise IdempotencyConflict()
        order = _new_order(session, user_id, request, plan, now)
        row.fingerprint, row.order_id, row.state = (
            request.fingerprint(),
            order.order_id,
            "in_progress",
        )
        row.locked_until = now + lease
        session.flush()
        return Claim(order=order)
    if row is not None:
        if row.fingerprint != request.fingerprint():
            raise IdempotencyConflict()
        if row.state == "completed":
            return Claim(replay=(row.response_status, row.response_body))  # type: ignore[arg-type]
        if row.locked_until > now:
            return Claim()
        row.locked_until = now + lease
        return Claim(order=session.get(Order, row.order_id, populate_existing=True))
    order = _new_order(session, user_id, request, plan, now)
    session.add(
        IdempotencyKey(
            user_id=user_id,
            key=key,
            fingerprint=request.fingerprint(),
            state="in_progress",
            order_id=order.order_id,
            locked_until=now + lease,
            created_at=now,
        )
    )
    session.flush()  # IntegrityError here: a racing retry inserted first; the caller asks again
    return Claim(order=order)


def _new_order(
    session: Session, user_id: str, request: OrderRequest, plan: Plan, now: datetime
) -> Order:
    order = Order(
        order_id=new_id("ord"),
        user_id=user_id,
        kind="purchase",
        plan=plan.plan,
        seats=request.seats,
        amount_cents=price(plan, request.seats),
        currency=plan.currency,
        status="pending",
        payment_method=request.payment_method,
        created_at=now,
        updated_at=now,
    )
    session.add(order)
    return order


def _complete_key(session: Session, order: Order, status: int, body: dict[str, Any]) -> None:
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.order_id == order.order_id)
        .values(state="completed", response_status=status, response_body=body)
    )


def _release_key(session: Session, order: Order) -> None:
    """Let a retry with the key try again (nothing charged, or refunded) — for the same
    order only: the key keeps naming it (`claim`)."""
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.order_id == order.order_id)
        .values(state="released")
    )


# --- 3. settle -----------------------------------------------------------------------


def fulfil(session: Session, order_id: str, charge: Charge, plan: Plan) -> dict[str, Any]:
    """The paid order, its subscription, its audit entry and its event: one transaction."""
    order = session.get(Order, order_id, with_for_update=True, populate_existing=True)
    assert order is not None
    subscription = auth_api.grant_subscription(
        session,
        order.user_id,
        plan=order.plan,
        seats=order.seats,
        period=timedelta(days=plan.period_days),
        actor_id=order.order_id,
    )
    order.status, order.charge_id = "paid", charge.charge_id
    order.subscription_id = subscription.subscription_id
    order.settled_at = utcnow()
    order.version += 1
    session.flush()
    admin_api.record_audit(
        session,
        "ORDER_PAID",
        user_id=order.user_id,
        actor_id=order.user_id,
        details={
            "order_id": order.order_id,
            "plan": order.plan,
            "seats": order.seats,
            "amount_cents": order.amount_cents,
            "currency": order.currency,
            "charge_id": charge.charge_id,
            "subscription_id": subscription.subscription_id,
        },
    )
    events.publish(session, _paid(order), aggregate_version=order.version)
    body = order_body(order)
    _complete_key(session, order, 201, body)
    return body


def fail(
    session: Session,
    order_id: str,
    *,
    failure_code: str,
    audit_action: str,
    response: tuple[int, dict[str, Any]] | None,
    refund: Refund | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """The order failed. With `response` the key replays it; without, the key is released."""
    order = session.get(Order, order_id, with_for_update=True, populate_existing=True)
    assert order is not None
    order.status, order.failure_code = "failed", failure_code
    if refund is not None:
        order.refund_id = refund.refund_id
    order.version += 1
    admin_api.record_audit(
        session,
        audit_action,
        user_id=order.user_id,
        actor_id=order.user_id,
        details={
            "order_id": order.order_id,
            "amount_cents": order.amount_cents,
            "currency": order.currency,
            "failure_code": failure_code,
            **(details or {}),
        },
    )
    if response is None:
        _release_key(session, order)
    else:
        _complete_key(session, order, *response)


# --- reading -------------------------------------------------------------------------


def get_order(session: Session, order_id: str, *, user_id: str, is_admin: bool) -> Order:
    order = session.get(Order, order_id)
    if order is None or (order.user_id != user_id and not is_admin):
        raise OrderNotFound()  # never reveal someone else's order
    return order


def list_orders(
    session: Session, user_id: str, *, limit: int, after: tuple[str] | None
) -> tuple[list[Order], str | None]:
    """The user's orders, newest first, and the cursor of the next page."""
    stmt = select(Order).where(Order.user_id == user_id)
    rows = session.scalars(newest_first(stmt, (Order.order_id,), after, limit)).all()
    return page_of(rows, limit, lambda o: (o.order_id,))


# --- cancelling ----------------------------------------------------------------------


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
    admin_api.record_audit(
        session,
        "ORDER_CANCELLED",
        user_id=order.user_id,
        actor_id=actor_id,
        details={
            "order_id": order.order_id,
            "refund_id": refund.refund_id,
            "amount_cents": order.amount_cents,
            "currency": order.currency,
            "subscription_ended": still_backing,
        },
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


# --- renewals ------------------------------------------------------------------------


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
    order = Order(
        order_id=new_id("ord"),
        user_id=sub.user_id,
        kind="renewal",
        plan=sub.plan,
        seats=sub.seats,
        amount_cents=price(plan, sub.seats),
        currency=plan.currency,
        status="pending",
        payment_method=method or "none",
        subscription_id=sub.subscription_id,
        renewal_key=renewal_key,
        created_at=now,
        updated_at=now,
    )
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
    order.status, order.charge_id = "paid", charge.charge_id
    order.settled_at = utcnow()
    order.version += 1
    session.flush()
    admin_api.record_audit(
        session,
        "ORDER_PAID",
        user_id=order.user_id,
        actor_id=None,
        details={
            "order_id": order.order_id,
            "kind": "renewal",
            "amount_cents": order.amount_cents,
            "currency": order.currency,
            "subscription_id": sub.subscription_id,
        },
    )
    events.publish(session, _paid(order), aggregate_version=order.version)
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


def _paid(order: Order) -> OrderPaid:
    """The `order.paid` event of a settled order (a purchase or a renewal)."""
    assert order.subscription_id is not None
    return OrderPaid(
        order_id=order.order_id,
        user_id=order.user_id,
        kind="renewal" if order.kind == "renewal" else "purchase",
        plan=order.plan,
        seats=order.seats,
        amount_cents=order.amount_cents,
        currency=order.currency,
        subscription_id=order.subscription_id,
    )
