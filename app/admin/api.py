"""admin's public facade: the only thing other modules may import from admin."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.admin import MODULE, service
from app.admin.events import AuditRecorded
from app.kernel import events
from app.kernel.db import has_own_database, utcnow
from app.kernel.ids import new_id
from app.kernel.ownership import module_api

# The event an audit entry travels as when admin has its own database (phase 3).
AUDIT_RECORDED = service.AUDIT_RECORDED


@module_api(MODULE)
def record_audit(
    session: Session,
    action: str,
    *,
    user_id: str | None = None,
    actor_id: str | None = None,
    details: dict[str, Any] | None = None,
    ip_address: str | None = None,
) -> str:
    """Write an audit entry inside the caller's transaction; returns its log id.

    This is the only way any module writes an audit entry. It commits nothing: the entry
    lands with the caller's rows or not at all. When admin runs on its own database
    (phase 3) the entry is an `audit.recorded` event in the caller's outbox instead, which
    admin's consumer applies exactly once (same log id).
    """
    event = AuditRecorded(
        log_id=new_id("log"),
        action=action,
        user_id=user_id,
        actor_id=actor_id,
        details=details,
        ip_address=ip_address,
        timestamp=utcnow(),
    )
    if has_own_database(session, MODULE):
        events.publish(session, event)
    else:
        session.add(service.audit_entry(event))
    return event.log_id


@module_api(MODULE)
def archive_audit_batch(session: Session, cutoff: datetime, batch_size: int) -> int:
    """Move up to `batch_size` audit entries older than `cutoff` to the archive, inside the
    caller's transaction; returns how many moved (0 when done)."""
    return service.archive_batch(session, cutoff, batch_size)


@module_api(MODULE)
def is_admin(session: Session, user_id: str) -> bool:
    """True when the user exists and currently has the admin role (for other modules'
    admin-only routes: a demoted admin's token stops working at once)."""
    return service.is_admin(session, user_id)
