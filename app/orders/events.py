"""The events orders publishes (part of its contract, re-exported by `app.orders.api`).

Payloads are documented for receivers in docs/events.md; the aggregate is the order, at the
order's version after the change.
"""

from __future__ import annotations

from typing import Literal

from app.kernel.events import IntegrationEvent


class OrderPaid(IntegrationEvent, type="order.paid"):
    """An order's payment settled: a purchase (the subscription granted or changed) or a
    renewal (the subscription extended by a period)."""

    order_id: str
    user_id: str
    kind: Literal["purchase", "renewal"]
    plan: str
    seats: int
    amount_cents: int
    currency: str
    subscription_id: str


class OrderRefunded(IntegrationEvent, type="order.refunded"):
    """A paid order was cancelled and its payment refunded; `subscription_ended` says
    whether the subscription it backed ended with it (a later order may back it instead)."""

    order_id: str
    user_id: str
    refund_id: str
    amount_cents: int
    currency: str
    subscription_ended: bool
