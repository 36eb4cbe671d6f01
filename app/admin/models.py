"""Tables owned by admin. Imported by the admin module only (import-linter enforces it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.admin import MODULE
from app.kernel.db import Base, UtcDateTime, utcnow
from app.kernel.ids import id_factory


class AuditLog(Base):
    """One audited action. `user_id` is whom it concerns, `actor_id` who did it.

    No foreign key to `users`: admin does not own that table, and in phase 3 the audit
    log lives in another database.
    """

    __tablename__ = "audit_logs"

    log_id: Mapped[str] = mapped_column(String(40), primary_key=True, default=id_factory("log"))
    user_id: Mapped[str | None] = mapped_column(String(40))
    actor_id: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    ip_address: Mapped[str | None] = mapped_column(String(45))
    timestamp: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    # Audit search is newest first, optionally by user or action: each filter has an index
    # whose trailing columns give the order, so a page is an index range scan.
    __table_args__ = (
        Index("ix_audit_logs_timestamp_log_id", "timestamp", "log_id"),
        Index("ix_audit_logs_user_id_timestamp_log_id", "user_id", "timestamp", "log_id"),
        Index("ix_audit_logs_action_timestamp_log_id", "action", "timestamp", "log_id"),
        {"schema": MODULE},
    )


class AuditLogArchive(Base):
    """Audit entries moved out of the hot table by `flask audit archive`."""

    __tablename__ = "audit_logs_archive"

    log_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(40), index=True)
    actor_id: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    ip_address: Mapped[str | None] = mapped_column(String(45))
    timestamp: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    archived_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    __table_args__ = {"schema": MODULE}
