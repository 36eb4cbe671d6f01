"""The outbox: `publish(session, …)` adds an event inside the caller's transaction.

The event commits with the business rows or not at all. Phase 3's relay (`flask outbox
relay`) will publish unpublished rows; until then they are the durable record of what
happened, in order.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.kernel.models import OutboxEvent
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
