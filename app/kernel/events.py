"""Events: `publish(session, …)` adds one to the outbox inside the caller's transaction;
consumers register handlers and record what they applied in their inbox.

The event commits with the business rows or not at all. In phase 3 (a module on its own
database) `flask outbox relay` publishes the outbox to a Redis stream and `flask outbox
consume MODULE` applies each event once (app/kernel/outbox.py); until then the outbox is
the durable, ordered record of what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.kernel.models import InboxEvent, OutboxEvent
from app.kernel.ownership import KERNEL, module_api


@module_api(KERNEL)
def publish(
    session: Session, event_type: str, payload: dict[str, Any], *, aggregate_id: str | None = None
) -> str:
    """Append an event to the outbox in the caller's transaction; returns its event id."""
    event = OutboxEvent(event_type=event_type, payload=payload, aggregate_id=aggregate_id)
    session.add(event)
    session.flush()
    return event.event_id


@dataclass(frozen=True)
class Event:
    """An event as a consumer receives it."""

    event_id: str
    event_type: str
    aggregate_id: str | None
    payload: dict[str, Any]
    seq: int = 0


# A handler applies one event inside the consumer's transaction, running as its module.
Handler = Callable[[Session, Event], None]
_handlers: dict[str, dict[str, Handler]] = {}


def register_handler(consumer: str, event_type: str, handler: Handler) -> None:
    """Let `consumer` (a module: its consumer group and inbox) apply events of a type."""
    existing = _handlers.setdefault(consumer, {}).get(event_type)
    if existing is not None and existing is not handler:
        raise ValueError(f"{consumer!r} already handles {event_type!r}")
    _handlers[consumer][event_type] = handler


def handlers_of(consumer: str) -> dict[str, Handler]:
    return dict(_handlers.get(consumer, {}))


@module_api(KERNEL)
def mark_processed(session: Session, consumer: str, event_id: str) -> bool:
    """Record in the inbox that `consumer` applied `event_id`, in the caller's transaction.

    False when it was recorded before (the event is a duplicate: skip it). Two consumers
    racing on one event both see True; the inbox's primary key fails the second commit.
    """
    seen = session.scalar(
        select(InboxEvent.event_id).where(
            InboxEvent.consumer == consumer, InboxEvent.event_id == event_id
        )
    )
    if seen is not None:
        return False
    session.add(InboxEvent(consumer=consumer, event_id=event_id))
    session.flush()
    return True
