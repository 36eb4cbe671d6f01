"""Tables owned by auth. Imported by the auth module only (import-linter enforces it)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.kernel.db import Base, UtcDateTime, utcnow
from app.kernel.ids import id_factory


class User(Base):
    """An account. Emails are stored lower-cased and are unique."""

    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(40), primary_key=True, default=id_factory("usr"))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    plan: Mapped[str] = mapped_column(String(32), default="free")
    role: Mapped[str] = mapped_column(String(16), default="user")
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    # Serves lookups by plan (its leading column) and "new users per plan since …".
    __table_args__ = (Index("ix_users_plan_created_at", "plan", "created_at"),)


class TokenRevocation(Base):
    """A revoked token (`kind="token"`, key = jti) or token family (`kind="family"`).

    Kept until the revoked token(s) would have expired anyway, then pruned
    (`flask tokens prune`). Redis keeps nothing on disk here, so revocations live in the
    database: a restart of anything never brings a revoked token back.
    """

    __tablename__ = "token_revocations"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    user_id: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(String(32))
    revoked_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
