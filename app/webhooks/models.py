"""webhooks' tables: the endpoints admins register and the deliveries to them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.kernel.db import Base, UtcDateTime, utcnow
from app.kernel.ids import id_factory
from app.webhooks import MODULE


class WebhookEndpoint(Base):
    """Where events of some types are posted. The signing secret is stored encrypted with a
    key from configuration (a database dump alone cannot sign); after a rotation the
    previous secret keeps signing alongside until `previous_secret_expires_at`."""

    __tablename__ = "webhook_endpoints"

    webhook_id: Mapped[str] = mapped_column(String(40), primary_key=True, default=id_factory("whk"))
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(500), default="")
    events: Mapped[list[str]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    secret: Mapped[str] = mapped_column(Text)  # encrypted
    previous_secret: Mapped[str | None] = mapped_column(Text)  # encrypted
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Since when every delivery has failed (None: the last one succeeded); an endpoint
    # failing for days is disabled.
    failing_since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = {"schema": MODULE}


class WebhookDelivery(Base):
    """One event for one endpoint: `pending` until it succeeds or has used every attempt
    (`failed`). A worker leases it (`lease_until`, `leased_by`) while posting it; a worker
    killed meanwhile leaves the lease to expire, and the delivery is posted again."""

    __tablename__ = "webhook_deliveries"

    delivery_id: Mapped[str] = mapped_column(
        String(40), primary_key=True, default=id_factory("whd")
    )
    webhook_id: Mapped[str] = mapped_column(String(40))
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)  # the envelope, as posted
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|succeeded|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    leased_by: Mapped[str | None] = mapped_column(String(100))
    last_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_latency_ms: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    last_response: Mapped[str | None] = mapped_column(String(1000))  # truncated
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "webhook_id", "created_at", "delivery_id"),
        {"schema": MODULE},
    )
