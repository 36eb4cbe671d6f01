"""The kernel's own tables: the event outbox, the consumers' inbox and the relay's lease
(docs/phases.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Identity, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.kernel.db import Base, UtcDateTime, utcnow
from app.kernel.ids import id_factory
from app.kernel.ownership import KERNEL


class OutboxEvent(Base):
    """An event committed with the business rows that caused it, waiting to be relayed.

    `seq` is the order of the outbox (a database sequence: an event of a later transaction on
    the same rows gets a higher number); `event_id` is the event's public identity, the key
    of every consumer's inbox. The relay sets `published_at` and `stream_ref`
    (`<epoch>/<stream entry id>`) when the event is in Redis, and `confirmed_at` once every
    consumer group has acknowledged it; only then is it safe from a Redis restart.
    """

    __tablename__ = "event_outbox"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True
    )
    event_id: Mapped[str] = mapped_column(String(40), unique=True, default=id_factory("evt"))
    event_type: Mapped[str] = mapped_column(String(100))
    # The envelope (app/kernel/events/envelope.py): the payload's version, the aggregate's
    # type and its version after the change; `created_at` is when the event occurred.
    event_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    aggregate_type: Mapped[str | None] = mapped_column(String(40))
    aggregate_id: Mapped[str | None] = mapped_column(String(40))
    aggregate_version: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    stream_ref: Mapped[str | None] = mapped_column(String(100))
    confirmed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        # The relay's two scans, oldest first: not yet published; published, not confirmed.
        Index("ix_event_outbox_published_at_seq", "published_at", "seq"),
        Index("ix_event_outbox_confirmed_at_seq", "confirmed_at", "seq"),
        {"schema": KERNEL, "sqlite_autoincrement": True},
    )


class InboxEvent(Base):
    """An event a consumer has applied; its primary key makes applying twice impossible."""

    __tablename__ = "event_inbox"

    consumer: Mapped[str] = mapped_column(String(50), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    __table_args__ = {"schema": KERNEL}


class DeadLetter(Base):
    """An event a consumer could not apply after several attempts, set aside in the
    consumer's own database (durable, unlike Redis) so that acknowledging it loses nothing.
    `payload` keeps the whole envelope (a letter from before envelopes: the bare payload).
    `flask outbox dead-letters MODULE [--retry]` lists them and applies them again."""

    __tablename__ = "event_dead_letters"

    consumer: Mapped[str] = mapped_column(String(50), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(100))
    aggregate_id: Mapped[str | None] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    error: Mapped[str] = mapped_column(String(1000))
    failed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    __table_args__ = {"schema": KERNEL}


class EventLease(Base):
    """Who may relay (or consume) right now: one row per lease, held until `expires_at`.

    Only the holder publishes, so events leave the outbox in `seq` order even when two
    relays run; the other waits and takes over when the holder stops renewing.
    """

    __tablename__ = "event_leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = {"schema": KERNEL}
