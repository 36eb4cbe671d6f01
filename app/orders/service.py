"""Placing and reading orders. Plain Python: every function takes a Session and never commits.

Placing an order is three steps, so that money never moves inside a database transaction:
1. claim (one transaction): the Idempotency-Key row and a pending order;
2. charge the payment provider (idempotent by order id);
3. settle (one transaction): the order paid, the subscription granted (auth.api), the
   audit entry (admin.api) and the `order.paid` event (kernel.events) — or, if that fails,
   refund the charge (compensation) and record that.

Cancelling is in `cancellation.py`, renewal orders in `renewals.py`; `workflows.py` runs the
steps, each in its own transaction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, inspect, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app.admin import api as admin_api
from app.auth import api as auth_api
from app.kernel import events
from app.kernel.db import execute_now, utcnow
from app.kernel.errors import Conflict, NotFound, ProblemError
from app.kernel.ids import new_id
from app.kernel.pagination import newest_first, page_of
from app.orders.events import OrderPaid
from app.orders.models import IdempotencyKey, Order
from app.orders.payments import Charge, Refund
from app.orders.plans import Plan


class UnknownPlan(ProblemError):
    status, code = 422, "unknown_plan"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"
    detail = "This Idempotency-Key was used with a different request body."


class IdempotencyInProgress(Conflict):
    code = "idempotency_in_progress"
    detail = "A request with this Idempotency-Key is still being processed; retry shortly."
    headers = {"Retry-After": "1"}


class OrderNotFound(NotFound):
    code = "order_not_found"
    detail = "No such order."


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


def plan_to_buy(catalog: dict[str, Plan], name: str, seats: int | None) -> tuple[Plan, int]:
    """The plan and number of seats an order asks for, when they can be bought: a plan with
    a price, and no more seats than it allows (none asked: the plan's own)."""
    plan = catalog.get(name)
    if plan is None or not plan.purchasable:
        raise UnknownPlan(f"{name!r} is not a plan that can be bought.")
    seats = seats or plan.seats
    if seats > plan.max_seats:
        raise ProblemError(
            f"The {plan.plan} plan has at most {plan.max_seats} seats.",
            status=422,
            code="too_many_seats",
        )
    return plan, seats


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
    session.flush()  # pending ORM changes first, as the ORM's read did (autoflush)
    if execute_now(session, _LOCK_KEY, {"of_user": user_id, "of_key": key}).first() is None:
        return Claim(order=_claim_new_key(session, user_id, key, request, plan, now + lease, now))
    row = session.get(IdempotencyKey, (user_id, key), with_for_update=True, populate_existing=True)
    assert row is not None  # locked by the statement above
    if row.state == "released":
        # Its last attempt charged nothing (or was refunded): the key may try again, for the
        # same order — another card is fine, another plan or seat count is another request.
        failed = session.get(Order, row.order_id)
        if failed is None or (failed.plan, failed.seats) != (request.plan, request.seats):
            raise IdempotencyConflict()
        order = _new_purchase(session, user_id, request, plan, now)
        row.fingerprint, row.order_id, row.state = (
            request.fingerprint(),
            order.order_id,
            "in_progress",
        )
        row.locked_until = now + lease
        session.flush()
        return Claim(order=order)
    if row.fingerprint != request.fingerprint():
        raise IdempotencyConflict()
    if row.state == "completed":
        return Claim(replay=(row.response_status, row.response_body))  # type: ignore[arg-type]
    if row.locked_until > now:
        return Claim()
    row.locked_until = now + lease
    return Claim(order=session.get(Order, row.order_id, populate_existing=True))


# A new key, the usual case (every order): statements built once, run on the transaction's
# connection (ADR 0016). A key that exists is loaded and changed through the ORM (`claim`).
_LOCK_KEY = (
    select(IdempotencyKey.state)
    .where(
        IdempotencyKey.user_id == bindparam("of_user"), IdempotencyKey.key == bindparam("of_key")
    )
    .with_for_update()
)
_INSERT_ORDER = insert(Order)
_INSERT_KEY = insert(IdempotencyKey)


def _claim_new_key(
    session: Session,
    user_id: str,
    key: str,
    request: OrderRequest,
    plan: Plan,
    locked_until: datetime,
    now: datetime,
) -> Order:
    """A pending order and the key naming it, inserted; the order as a copy outside the
    session (the settlement reads its row again, locked)."""
    values = _order_values(user_id, "purchase", plan, request.seats, request.payment_method, now)
    execute_now(session, _INSERT_ORDER, values)
    key_row = {"user_id": user_id, "key": key, "fingerprint": request.fingerprint()}
    key_row |= {"state": "in_progress", "order_id": values["order_id"]}
    key_row |= {"locked_until": locked_until, "created_at": now}
    # IntegrityError here: a racing retry inserted the key first; the caller asks again.
    execute_now(session, _INSERT_KEY, key_row)
    return Order(**values)


def new_order(
    user_id: str, kind: str, plan: Plan, seats: int, payment_method: str, now: datetime
) -> Order:
    """A pending order (a purchase or a renewal) for `seats` of `plan` at its price; the
    caller adds it to the session."""
    return Order(**_order_values(user_id, kind, plan, seats, payment_method, now))


def _order_values(
    user_id: str, kind: str, plan: Plan, seats: int, payment_method: str, now: datetime
) -> dict[str, Any]:
    return {
        "order_id": new_id("ord"),
        "user_id": user_id,
        "kind": kind,
        "plan": plan.plan,
        "seats": seats,
        "amount_cents": price(plan, seats),
        "currency": plan.currency,
        "status": "pending",
        "payment_method": payment_method,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }


def _new_purchase(
    session: Session, user_id: str, request: OrderRequest, plan: Plan, now: datetime
) -> Order:
    order = new_order(user_id, "purchase", plan, request.seats, request.payment_method, now)
    session.add(order)
    return order


# The key's answer, recorded in the settlement's transaction: statements built once, run on
# the transaction's connection (ADR 0016), not through the ORM's bulk-update path.
_OF_ORDER = IdempotencyKey.order_id == bindparam("of_order")
_COMPLETE_KEY = (
    update(IdempotencyKey)
    .where(_OF_ORDER)
    .values(
        state="completed",
        response_status=bindparam("answer_status"),
        response_body=bindparam("answer_body"),
    )
)
_RELEASE_KEY = update(IdempotencyKey).where(_OF_ORDER).values(state="released")


def _complete_key(session: Session, order: Order, status: int, body: dict[str, Any]) -> None:
    params = {"of_order": order.order_id, "answer_status": status, "answer_body": body}
    execute_now(session, _COMPLETE_KEY, params)
    _expire_keys(session, order.order_id)


def _release_key(session: Session, order: Order) -> None:
    """Let a retry with the key try again (nothing charged, or refunded) — for the same
    order only: the key keeps naming it (`claim`)."""
    execute_now(session, _RELEASE_KEY, {"of_order": order.order_id})
    _expire_keys(session, order.order_id)


def _expire_keys(session: Session, order_id: str) -> None:
    """The session's copy of the order's key is read again when next used (what the ORM's
    update did by setting its attributes)."""
    for row in list(session.identity_map.values()):
        if isinstance(row, IdempotencyKey) and row.order_id == order_id:
            session.expire(row)


# --- 3. settle -----------------------------------------------------------------------


def fulfil(session: Session, order_id: str, charge: Charge, plan: Plan) -> dict[str, Any]:
    """The paid order, its subscription, its audit entry and its event: one transaction."""
    session.flush()  # pending ORM changes first, as the ORM's read did (autoflush)
    # A copy outside the session: mark_paid brings the session's own, if any, up to date.
    order = Order(**execute_now(session, _LOCK_ORDER, {"of_order": order_id}).one()._asdict())
    if order.status != "pending":
        # An attempt that outlived its lease: a retry or `flask orders recover` took the
        # order over and finished it meanwhile. Granting again would give twice what was paid.
        raise FinishedElsewhere(_recorded_answer(session, order_id))
    if _overtaken(session, order):
        raise Overtaken(order_id)
    subscription = auth_api.grant_subscription(
        session,
        order.user_id,
        plan=order.plan,
        seats=order.seats,
        period=timedelta(days=plan.period_days),
        actor_id=order.order_id,
    )
    order.subscription_id = subscription.subscription_id
    mark_paid(
        session,
        order,
        charge,
        actor_id=order.user_id,
        details={
            "plan": order.plan,
            "seats": order.seats,
            "charge_id": charge.charge_id,
            "subscription_id": subscription.subscription_id,
        },
    )
    body = order_body(order)
    _complete_key(session, order, 201, body)
    return body


class FinishedElsewhere(Exception):
    """Another attempt of the order settled or failed it first; `answer` is what its key
    answers (None: nothing recorded to replay)."""

    def __init__(self, answer: tuple[int, dict[str, Any]] | None) -> None:
        super().__init__("the order was finished by another attempt")
        self.answer = answer


class Overtaken(Exception):
    """A purchase settled late (recovered, or retried after its lease) after a later order
    of the same user was settled: granting it now would replace what the customer bought
    since with an older choice, so it is refunded instead."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id}: a later order of this user was settled first")


# The settlement's statements (every paid order), built once and run on the transaction's
# connection (ADR 0016): the order's row, locked; a later order of the user settled first;
# the order paid.
_LOCK_ORDER = (
    select(Order.__table__).where(Order.order_id == bindparam("of_order")).with_for_update()
)
# Served by ix_orders_user_id_created_at_settled (migration 0013): a range of the user's
# settled orders whose first entry answers, however many orders the user has.
_SETTLED_LATER = (
    select(Order.order_id)
    .where(
        Order.user_id == bindparam("of_user"),
        Order.settled_at.is_not(None),
        Order.created_at > bindparam("created_after"),
    )
    .limit(1)
)
_MARK_PAID = (
    update(Order)
    .where(Order.order_id == bindparam("of_order"))
    .values(
        status="paid",
        charge_id=bindparam("paid_charge"),
        subscription_id=bindparam("paid_subscription"),
        settled_at=bindparam("paid_at"),
        updated_at=bindparam("paid_at"),
        version=bindparam("paid_version"),
    )
)


def _overtaken(session: Session, order: Order) -> bool:
    params = {"of_user": order.user_id, "created_after": order.created_at}
    return execute_now(session, _SETTLED_LATER, params).first() is not None


def _recorded_answer(session: Session, order_id: str) -> tuple[int, dict[str, Any]] | None:
    key = session.scalar(select(IdempotencyKey).where(IdempotencyKey.order_id == order_id))
    if key is None or key.response_status is None or key.response_body is None:
        return None
    return key.response_status, key.response_body


def mark_paid(
    session: Session,
    order: Order,
    charge: Charge,
    *,
    actor_id: str | None,
    details: dict[str, Any],
) -> None:
    """The order is paid (a purchase's or a renewal's): its row, its ORDER_PAID audit entry
    and its order.paid event, in the caller's transaction. `order` (and the session's copy
    of it, if another) takes the values written, as the ORM's flush would have left it."""
    session.flush()  # pending ORM changes first, as the ORM's flush did with them
    now, version = utcnow(), order.version + 1
    params = {"paid_charge": charge.charge_id, "paid_subscription": order.subscription_id}
    params |= {"of_order": order.order_id, "paid_at": now, "paid_version": version}
    execute_now(session, _MARK_PAID, params)
    paid = {"status": "paid", "charge_id": charge.charge_id, "settled_at": now}
    paid |= {"updated_at": now, "version": version, "subscription_id": order.subscription_id}
    _written(session, order, paid)
    audit_order(session, order, "ORDER_PAID", actor_id=actor_id, details=details)
    events.publish(session, paid_event(order), aggregate_version=order.version)


def _written(session: Session, order: Order, values: dict[str, Any]) -> None:
    """`order` takes the `values` a statement wrote to its row, and so does the session's
    copy of that row when it has loaded another (all of `order`'s columns, as a locked read
    and a flush would have left them): no stale copy is left behind; both stay clean."""
    for name, value in values.items():
        set_committed_value(order, name, value)
    loaded = session.identity_map.get(_ORDER.identity_key_from_primary_key((order.order_id,)))
    if loaded is not None and loaded is not order:
        for name in _ORDER_FIELDS:
            set_committed_value(loaded, name, getattr(order, name))


_ORDER = inspect(Order)
_ORDER_FIELDS = tuple(attribute.key for attribute in _ORDER.column_attrs)


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
    audit_order(
        session,
        order,
        audit_action,
        actor_id=order.user_id,
        details={"failure_code": failure_code, **(details or {})},
    )
    if response is None:
        _release_key(session, order)
    else:
        _complete_key(session, order, *response)


def audit_order(
    session: Session, order: Order, action: str, *, actor_id: str | None, details: dict[str, Any]
) -> None:
    """The audit entry of something that happened to `order`: its id, amount and currency,
    then `details`."""
    entry = {
        "order_id": order.order_id,
        "amount_cents": order.amount_cents,
        "currency": order.currency,
        **details,
    }
    admin_api.record_audit(session, action, user_id=order.user_id, actor_id=actor_id, details=entry)


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


def paid_event(order: Order) -> OrderPaid:
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
