"""Events: one envelope, typed events, the outbox they are published to and what reads it.

- `envelope.py`: `Envelope` (id, type, version, occurred_at, aggregate, payload) and
  `IntegrationEvent`, the base of the typed events each module declares in its contract.
- `outbox.py`: `publish(session, event)` appends an event in the caller's transaction (it
  commits with the business rows or not at all).
- `inbox.py`: consumers' handlers, the inbox that applies each event once, dead letters.
- `stream.py`, `relay.py`, `consumer.py`: phase 3 (ADR 0004), the outbox relayed to a
  Redis stream and applied exactly once by the module on its own database.
- `cli.py`: `flask outbox relay|consume|status|prune|dead-letters`.

Other code imports this package (`from app.kernel import events`) and uses the names below.
"""

from app.kernel.events.envelope import (
    Aggregate,
    Envelope,
    EnvelopeError,
    IntegrationEvent,
    event_class_of,
    event_types,
)
from app.kernel.events.inbox import (
    Handler,
    apply_once,
    dead_letters,
    forget_dead_letter,
    handlers_of,
    mark_processed,
    record_dead_letter,
    register_handler,
    was_processed,
)
from app.kernel.events.outbox import envelope_of, on_publish, publish

__all__ = [
    "Aggregate",
    "Envelope",
    "EnvelopeError",
    "Handler",
    "IntegrationEvent",
    "apply_once",
    "dead_letters",
    "envelope_of",
    "event_class_of",
    "event_types",
    "forget_dead_letter",
    "handlers_of",
    "mark_processed",
    "on_publish",
    "publish",
    "record_dead_letter",
    "register_handler",
    "was_processed",
]
