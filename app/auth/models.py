"""Tables owned by auth. Imported by the auth module only (import-linter enforces it)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.auth import MODULE
from app.kernel.db import Base, UtcDateTime, utcnow
from app.kernel.ids import id_factory


def _unique_where(name: str, column: str, condition: str) -> Index:
    """A partial unique index: `column` is unique among the rows meeting `condition` (the
    same condition on SQLite and PostgreSQL)."""
    where = text(condition)
    return Index(name, column, unique=True, sqlite_where=where, postgresql_where=where)


class User(Base):
    """An account. Emails are stored normalised (app.kernel.emails) and are unique.

    `failed_logins` and `locked_until` show admins the account-wide login state; the
    throttling itself is `LoginThrottle`'s (per account and address, and account-wide)."""

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
    __table_args__ = (Index("ix_users_plan_created_at", "plan", "created_at"), {"schema": MODULE})


class LoginThrottle(Base):
    """Failed logins of one account from one client address (`address` "*": from all).

    `account` is a keyed digest of the normalised email, so an email without an account
    is throttled exactly like one with (and nothing typed into the email field is stored
    as typed). Failures count within a window; reaching the limit locks the address (or,
    for "*", the account) for a time that doubles with each consecutive lock.
    """

    __tablename__ = "login_throttles"

    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(45), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(40), index=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_failure_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    lockouts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = {"schema": MODULE}


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

    __table_args__ = {"schema": MODULE}


class Subscription(Base):
    """A paid plan granted to a user (by the orders module, through auth.api).

    At most one live subscription (active or past_due) per user, enforced by a partial
    unique index.
    """

    __tablename__ = "subscriptions"

    subscription_id: Mapped[str] = mapped_column(
        String(40), primary_key=True, default=id_factory("sub")
    )
    user_id: Mapped[str] = mapped_column(ForeignKey(User.user_id))
    plan: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    seats: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    renews_at: Mapped[datetime] = mapped_column(UtcDateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_subscriptions_user_id_status", "user_id", "status"),
        Index("ix_subscriptions_renews_at", "renews_at"),
        _unique_where(
            "uq_subscriptions_user_id_live", "user_id", "status IN ('active', 'past_due')"
        ),
        {"schema": MODULE},
    )


class License(Base):
    """A license bound to one client (device/installation) of one user.

    `client_id` is unique among live licenses (not revoked), enforced by a partial unique
    index: two activations of one client_id can never both land, and a client whose
    license was deactivated can be activated again. `version` is the optimistic lock.
    """

    __tablename__ = "licenses"

    license_id: Mapped[str] = mapped_column(String(40), primary_key=True, default=id_factory("lic"))
    user_id: Mapped[str] = mapped_column(ForeignKey(User.user_id))
    client_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        # Seats in use (active, unexpired: counted from the index alone), a user's licenses
        # (user_id is the leading column).
        Index("ix_licenses_user_id_status_expires_at", "user_id", "status", "expires_at"),
        Index("ix_licenses_client_id", "client_id"),
        # Status counts and their oldest/newest issue time (admin statistics) from the
        # index alone; its leading column serves lookups by status too.
        Index("ix_licenses_status_created_at", "status", "created_at"),
        Index("ix_licenses_expires_at", "expires_at"),
        _unique_where("uq_licenses_client_id_live", "client_id", "status != 'revoked'"),
        {"schema": MODULE},
    )
