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

from app.kernel.models import DeadLetter, InboxEvent, OutboxEvent
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
def was_processed(session: Session, consumer: str, event_id: str) -> bool:
    """True when `consumer`'s inbox has `event_id`."""
    return (
        session.scalar(
            select(InboxEvent.event_id).where(
                InboxEvent.consumer == consumer, InboxEvent.event_id == event_id
            )
        )
        is not None
    )


@module_api(KERNEL)
def mark_processed(session: Session, consumer: str, event_id: str) -> bool:
    """Record in the inbox that `consumer` applied `event_id`, in the caller's transaction.

    False when it was recorded before (the event is a duplicate: skip it). Two consumers
    racing on one event both see True; the inbox's primary key fails the second commit.
    """
    if was_processed(session, consumer, event_id):
        return False
    session.add(InboxEvent(consumer=consumer, event_id=event_id))
    session.flush()
    return True


def apply_once(session: Session, consumer: str, event: Event, handler: Handler) -> bool:
    """Apply `event` with `handler` unless `consumer`'s inbox has it, recording it there: in
    the caller's transaction, as `consumer`. False for a duplicate (nothing applied)."""
    if not mark_processed(session, consumer, event.event_id):
        return False
    handler(session, event)
    return True


@module_api(KERNEL)
def record_dead_letter(session: Session, consumer: str, event: Event, error: str) -> None:
    """Set aside an event `consumer` cannot apply, with the error, in its own database."""
    session.merge(
        DeadLetter(
            consumer=consumer,
            event_id=event.event_id,
            event_type=event.event_type,
            aggregate_id=event.aggregate_id,
            payload=event.payload,
            error=error[:1000],
        )
    )
    session.flush()


@module_api(KERNEL)
def dead_letters(session: Session, consumer: str) -> list[DeadLetter]:
    """The events set aside for `consumer`, oldest first."""
    return list(
        session.scalars(
            select(DeadLetter)
            .where(DeadLetter.consumer == consumer)
            .order_by(DeadLetter.failed_at, DeadLetter.event_id)
        )
    )


@module_api(KERNEL)
def forget_dead_letter(session: Session, consumer: str, event_id: str) -> None:
    """Remove a dead letter (it was applied after all), in the caller's transaction."""
    letter = session.get(DeadLetter, (consumer, event_id))
    if letter is not None:
        session.delete(letter)
        session.flush()
