"""Tables owned by orders. Imported by the orders module only (import-linter enforces it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.kernel.db import Base, UtcDateTime, utcnow
from app.kernel.ids import id_factory
from app.orders import MODULE

_SETTLED = text("settled_at IS NOT NULL")


class Order(Base):
    """A purchase (or a renewal) of a plan. Money in integer minor units.

    No foreign key to users: orders does not own that table (and may live elsewhere in
    phase 3). `renewal_key` is unique, so two renewal runs cannot both bill one period.
    """

    __tablename__ = "orders"

    order_id: Mapped[str] = mapped_column(String(40), primary_key=True, default=id_factory("ord"))
    user_id: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(16), default="purchase")  # purchase | renewal
    plan: Mapped[str] = mapped_column(String(32))
    seats: Mapped[int] = mapped_column(Integer)
    amount_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))  # pending|paid|failed|cancelling|cancelled
    payment_method: Mapped[str] = mapped_column(String(128))
    charge_id: Mapped[str | None] = mapped_column(String(64))
    refund_id: Mapped[str | None] = mapped_column(String(64))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    subscription_id: Mapped[str | None] = mapped_column(String(40))
    renewal_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    # When the payment was settled: the latest settled order of a subscription is the one
    # its terms come from (ADR 0006).
    settled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        Index("ix_orders_user_id_order_id", "user_id", "order_id"),
        # A settlement's "has an order of this user created after this one settled?"
        # (service._SETTLED_LATER): its first entry in range answers, however many orders
        # the user has (migration 0013).
        Index(
            "ix_orders_user_id_created_at_settled",
            "user_id",
            "created_at",
            sqlite_where=_SETTLED,
            postgresql_where=_SETTLED,
        ),
        Index("ix_orders_subscription_id", "subscription_id"),
        Index("ix_orders_status", "status"),
        {"schema": MODULE},
    )


class IdempotencyKey(Base):
    """A client's Idempotency-Key: the request it named and the response it got.

    Unique per user and key (the primary key), so racing retries claim it once. While
    `state` is `in_progress` the claim holds until `locked_until`; after that a retry may
    take over (the first attempt's process died).
    """

    __tablename__ = "idempotency_keys"

    user_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # in_progress | completed | released
    order_id: Mapped[str] = mapped_column(String(40), index=True)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    locked_until: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)

    __table_args__ = {"schema": MODULE}
