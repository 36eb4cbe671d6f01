"""Admin's business logic. Plain Python: takes a Session, never commits."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.admin.models import AuditLog
from app.kernel.ids import new_id


def record_audit(
    session: Session,
    action: str,
    *,
    user_id: str | None = None,
    actor_id: str | None = None,
    details: dict[str, Any] | None = None,
    ip_address: str | None = None,
) -> AuditLog:
    """Add an audit entry to the session's current transaction."""
    entry = AuditLog(
        log_id=new_id("log"),
        action=action,
        user_id=user_id,
        actor_id=actor_id,
        details=details,
        ip_address=ip_address,
    )
    session.add(entry)
    return entry
