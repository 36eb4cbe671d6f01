"""The events orders publishes (part of its contract, re-exported by `app.orders.api`).

Payloads are documented for receivers in docs/events.md; the aggregate is the order, at the
order's version after the change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from app.kernel.events import IntegrationEvent


@dataclass(frozen=True, kw_only=True)
class OrderPaid(IntegrationEvent):
    """An order's payment settled: a purchase (the subscription granted or changed) or a
    renewal (the subscription extended by a period)."""

    TYPE: ClassVar[str] = "order.paid"
    AGGREGATE: ClassVar[str] = "order"
    AGGREGATE_ID: ClassVar[str] = "order_id"

    order_id: str
    user_id: str
    kind: Literal["purchase", "renewal"]
    plan: str
    seats: int
    amount_cents: int
    currency: str
    subscription_id: str


@dataclass(frozen=True, kw_only=True)
class OrderRefunded(IntegrationEvent):
    """A paid order was cancelled and its payment refunded; `subscription_ended` says
    whether the subscription it backed ended with it (a later order may back it instead)."""

    TYPE: ClassVar[str] = "order.refunded"
    AGGREGATE: ClassVar[str] = "order"
    AGGREGATE_ID: ClassVar[str] = "order_id"

    order_id: str
    user_id: str
    refund_id: str
    amount_cents: int
    currency: str
    subscription_ended: bool
