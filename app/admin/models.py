"""Tables owned by admin. Imported by the admin module only (import-linter enforces it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from app.kernel.db import Base, UtcDateTime, utcnow
from app.kernel.ids import id_factory


class AuditLog(Base):
    """One audited action. `user_id` is whom it concerns, `actor_id` who did it.

    No foreign key to `users`: admin does not own that table, and in phase 3 the audit
    log lives in another database.
    """

    __tablename__ = "audit_logs"

    log_id: Mapped[str] = mapped_column(String(40), primary_key=True, default=id_factory("log"))
    user_id: Mapped[str | None] = mapped_column(String(40), index=True)
    actor_id: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(64), index=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    ip_address: Mapped[str | None] = mapped_column(String(45))
    timestamp: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
