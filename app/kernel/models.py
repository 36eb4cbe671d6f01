"""The kernel's own tables: the event outbox and the consumers' inbox (DESIGN §7)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.kernel.db import Base, UtcDateTime, utcnow
from app.kernel.ids import id_factory
from app.kernel.ownership import KERNEL


class OutboxEvent(Base):
    """An event committed with the business rows that caused it, waiting to be relayed."""

    __tablename__ = "event_outbox"

    event_id: Mapped[str] = mapped_column(String(40), primary_key=True, default=id_factory("evt"))
    event_type: Mapped[str] = mapped_column(String(100))
    aggregate_id: Mapped[str | None] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    # The relay scans unpublished events oldest first.
    __table_args__ = (
        Index("ix_event_outbox_published_at_created_at", "published_at", "created_at"),
        {"schema": KERNEL},
    )


class InboxEvent(Base):
    """An event a consumer has applied; its primary key makes applying twice impossible."""

    __tablename__ = "event_inbox"

    consumer: Mapped[str] = mapped_column(String(50), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    __table_args__ = {"schema": KERNEL}
