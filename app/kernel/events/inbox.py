"""Consumers: handlers registered per module, the inbox that makes applying an event
idempotent, and the dead letters a consumer sets aside (in its own database).

A handler applies one envelope inside the consumer's transaction, running as its module;
`apply_once` records the event id in the consumer's inbox in that same transaction, so a
redelivered event is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.kernel.db import transaction
from app.kernel.events.envelope import Aggregate, Envelope, EnvelopeError
from app.kernel.models import DeadLetter, InboxEvent
from app.kernel.ownership import KERNEL, module_api

# A handler applies one event inside the consumer's transaction, running as its module.
Handler = Callable[[Session, Envelope], None]
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


def apply_once(session: Session, consumer: str, event: Envelope, handler: Handler) -> bool:
    """Apply `event` with `handler` unless `consumer`'s inbox has it, recording it there: in
    the caller's transaction, as `consumer`. False for a duplicate (nothing applied)."""
    if not mark_processed(session, consumer, event.id):
        return False
    handler(session, event)
    return True


# --- dead letters ----------------------------------------------------------------------


@module_api(KERNEL)
def record_dead_letter(session: Session, consumer: str, event: Envelope, error: str) -> None:
    """Set aside an event `consumer` cannot apply, with the error, in its own database. The
    whole envelope is kept (in `payload`), so a retry applies exactly what was received."""
    session.merge(
        DeadLetter(
            consumer=consumer,
            event_id=event.id,
            event_type=event.type,
            aggregate_id=event.aggregate.id if event.aggregate else None,
            payload=event.to_dict(),
            error=error[:1000],
        )
    )
    session.flush()


def envelope_of_letter(letter: DeadLetter) -> Envelope:
    """The envelope a dead letter keeps. A letter set aside before envelopes existed holds
    the bare payload: it is wrapped, with the failure's time standing in for occurred_at."""
    try:
        return Envelope.from_dict(letter.payload)
    except EnvelopeError:
        aggregate = Aggregate("", letter.aggregate_id) if letter.aggregate_id else None
        return Envelope(
            letter.event_id, letter.event_type, 1, letter.failed_at, aggregate, letter.payload
        )


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


@dataclass(frozen=True)
class Retried:
    """A dead letter applied again: `error` is None when it applied (and was removed)."""

    failed_at: datetime
    event_id: str
    event_type: str
    error: Exception | None


def retry_dead_letters(
    session: Session, consumer: str, letters: Sequence[DeadLetter]
) -> Iterator[Retried]:
    """Apply `consumer`'s dead `letters` again, in order, each in its own transaction (one
    that fails does not hold back the others): one that applies is removed, one that fails
    again stays. Yields each outcome as it happens."""
    handlers = handlers_of(consumer)
    for letter in letters:
        event = envelope_of_letter(letter)
        failed_at = letter.failed_at
        error: Any = None
        try:
            with transaction(session):
                apply_once(session, consumer, event, handlers[event.type])
                forget_dead_letter(session, consumer, event.id)
        except Exception as exc:
            error = exc
        yield Retried(failed_at, event.id, event.type, error)
