"""The outbox: an event committed in the caller's transaction, with the rows it reports.

`publish(session, OrderPaid(…), aggregate_version=…)` appends it; it commits with the
business rows or not at all, so a rolled-back change publishes nothing. Until a relay
(phase 3) or a webhook dispatcher reads it, the outbox is the durable, ordered record of
what happened. The operator's view of it (`flask outbox status|prune`) is here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy.orm import Session

from app.kernel.db import execute_now, utcnow
from app.kernel.events.envelope import Aggregate, Envelope, IntegrationEvent
from app.kernel.ids import new_id
from app.kernel.models import OutboxEvent
from app.kernel.ownership import KERNEL, module_api


@module_api(KERNEL)
def publish(
    session: Session,
    event: IntegrationEvent | str,
    payload: dict[str, Any] | None = None,
    *,
    aggregate_id: str | None = None,
    aggregate_version: int | None = None,
) -> str:
    """Append an event to the outbox in the caller's transaction; returns its event id.

    `event` is a typed event (its class gives the type, payload version and aggregate), or
    a bare type name with a `payload` dict for an event that has no class (a probe, a test).
    `aggregate_version` is the aggregate's version after the change, when it keeps one.
    """
    if isinstance(event, IntegrationEvent):
        if payload is not None or aggregate_id is not None:
            raise TypeError("a typed event carries its own payload and aggregate")
        aggregate = event.aggregate(aggregate_version)
        row = OutboxRow(
            event_type=event.TYPE,
            event_version=event.VERSION,
            payload=event.payload(),
            aggregate_type=aggregate and aggregate.type,
            aggregate_id=aggregate and aggregate.id,
            aggregate_version=aggregate and aggregate.version,
        )
    else:
        row = OutboxRow(
            event_type=event,
            event_version=1,
            payload=payload if payload is not None else {},
            aggregate_id=aggregate_id,
            aggregate_version=aggregate_version,
        )
    # One prebuilt INSERT, no ORM unit of work: every activation and order publishes.
    values = {name: value for name, value in vars(row).items() if name != "seq"}
    row.seq = execute_now(session, _INSERT_EVENT, values).inserted_primary_key[0]
    if _listeners:
        envelope = envelope_of(row)
        for listener in _listeners:
            listener(session, envelope)
    return row.event_id


_INSERT_EVENT = insert(OutboxEvent)


@dataclass
class OutboxRow:
    """The columns an event is inserted with (the others are the relay's)."""

    event_type: str
    event_version: int
    payload: dict[str, Any]
    aggregate_id: str | None
    aggregate_version: int | None
    aggregate_type: str | None = None
    event_id: str = field(default_factory=lambda: new_id("evt"))
    created_at: datetime = field(default_factory=utcnow)
    seq: int | None = None


# Called with each event as it is published, in the publisher's transaction (webhooks adds
# its deliveries so): whatever a listener writes commits or rolls back with the event.
Listener = Callable[[Session, Envelope], None]
_listeners: list[Listener] = []


def on_publish(listener: Listener) -> None:
    """Call `listener(session, envelope)` for every event published from now on."""
    if listener not in _listeners:
        _listeners.append(listener)


def envelope_of(row: Any) -> Envelope:
    """An outbox row (or a row of its columns) as its envelope."""
    aggregate = (
        None
        if row.aggregate_id is None
        else Aggregate(row.aggregate_type or "", row.aggregate_id, row.aggregate_version)
    )
    return Envelope(
        id=row.event_id,
        type=row.event_type,
        version=row.event_version or 1,
        occurred_at=row.created_at,
        aggregate=aggregate,
        payload=row.payload,
        seq=row.seq or 0,
    )


# --- the operator's view (`flask outbox status|prune`) ----------------------------------


@dataclass(frozen=True)
class OutboxStatus:
    unpublished: int
    unconfirmed: int
    oldest_unconfirmed: datetime | None


def outbox_status(session: Session) -> OutboxStatus:
    """How many events wait to be published, how many to be confirmed, and since when."""
    unpublished, unconfirmed, oldest = session.execute(
        select(
            func.count().filter(OutboxEvent.published_at.is_(None)),
            func.count().filter(OutboxEvent.confirmed_at.is_(None)),
            func.min(OutboxEvent.created_at).filter(OutboxEvent.confirmed_at.is_(None)),
        )
    ).one()
    return OutboxStatus(unpublished, unconfirmed, oldest)


def prune_outbox(session: Session, cutoff: datetime, *, relayed: bool) -> int:
    """Delete events confirmed before `cutoff`; when nothing relays the outbox (`relayed`
    false: no module on its own database) every event created before it. In the caller's
    transaction; returns how many were deleted."""
    done = OutboxEvent.confirmed_at < cutoff
    old = done if relayed else or_(done, OutboxEvent.created_at < cutoff)
    return session.execute(delete(OutboxEvent).where(old)).rowcount
