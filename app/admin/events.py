"""The event admin's facade publishes in phase 3 (ADR 0004): an audit entry travelling from
the caller's outbox to admin's own database, where admin's consumer writes it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.kernel.events import Aggregate, IntegrationEvent


class AuditRecorded(IntegrationEvent, type="audit.recorded", aggregate="user"):
    """An audit entry, with its pre-made `log_id` (so applying it twice is one entry)."""

    log_id: str
    action: str
    user_id: str | None = None
    actor_id: str | None = None
    details: dict[str, Any] | None = None
    ip_address: str | None = None
    timestamp: datetime

    def aggregate(self, version: int | None = None) -> Aggregate | None:
        """The user the entry is about (or the actor, for an entry about no user)."""
        subject = self.user_id or self.actor_id
        return None if subject is None else Aggregate(self.AGGREGATE, subject, version)
