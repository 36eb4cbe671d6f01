"""Browser sessions of the web console: server-side, revocable, owned by auth.

The console's cookie carries a random secret; the table keeps only its digest, so a copy
of the database signs nobody in. A session ends when it expires or when it is revoked —
by signing out, by "sign out everywhere", or by a password change — and a revocation is an
entry in the same `token_revocations` list as the API's tokens (kind `session`): one place
says what no longer counts, and `flask tokens prune` forgets both once they have expired.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ForeignKey, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.admin import api as admin_api
from app.auth import MODULE
from app.auth.accounts import revocations
from app.auth.models import User
from app.kernel.db import Base, UtcDateTime, utcnow
from app.kernel.ownership import module_api

SESSION_REVOCATION = "session"


class BrowserSession(Base):
    """One signed-in browser. `session_id` is the SHA-256 of the cookie's secret."""

    __tablename__ = "browser_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey(User.user_id), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    ip_address: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = {"schema": MODULE}


@dataclass(frozen=True)
class SignedIn:
    """Who a live browser session belongs to."""

    user_id: str
    email: str
    role: str
    plan: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@module_api(MODULE)
def start(
    session: Session,
    user_id: str,
    *,
    ttl: timedelta,
    ip: str | None,
    user_agent: str | None,
) -> str:
    """A new session for the user (inside the caller's transaction); returns the secret
    the cookie carries. Audited as LOGIN with `via: console`."""
    secret = secrets.token_urlsafe(32)
    session.add(
        BrowserSession(
            session_id=_digest(secret),
            user_id=user_id,
            expires_at=utcnow() + ttl,
            ip_address=ip,
            user_agent=(user_agent or "")[:255] or None,
        )
    )
    admin_api.record_audit(
        session,
        "LOGIN",
        user_id=user_id,
        actor_id=user_id,
        details={"via": "console"},
        ip_address=ip,
    )
    return secret


@module_api(MODULE)
def resolve(session: Session, secret: str | None, now: datetime | None = None) -> SignedIn | None:
    """The user a cookie's secret signs in, or None: unknown, expired or revoked."""
    if not secret or len(secret) > 128:
        return None
    key = _digest(secret)
    row = session.execute(
        select(User.user_id, User.email, User.role, User.plan, BrowserSession.expires_at)
        .join(User, User.user_id == BrowserSession.user_id)
        .where(BrowserSession.session_id == key)
    ).first()
    if row is None or row.expires_at <= (now or utcnow()):
        return None
    if revocations.is_revoked(session, key, None):
        return None
    return SignedIn(row.user_id, row.email, row.role, row.plan)


def _revoke_rows(session: Session, rows: list[BrowserSession], reason: str) -> int:
    revoked = 0
    for row in rows:
        if revocations._revoke(
            session, row.session_id, SESSION_REVOCATION, row.user_id, reason, row.expires_at
        ):
            revoked += 1
    return revoked


@module_api(MODULE)
def end(session: Session, secret: str, *, ip: str | None) -> None:
    """Sign this browser out (revoked at once; audited as LOGOUT)."""
    row = session.get(BrowserSession, _digest(secret))
    if row is None:
        return
    if _revoke_rows(session, [row], "sign_out"):
        admin_api.record_audit(
            session,
            "LOGOUT",
            user_id=row.user_id,
            actor_id=row.user_id,
            details={"via": "console"},
            ip_address=ip,
        )


def revoke_all(session: Session, user_id: str, *, reason: str) -> int:
    """Revoke every live browser session of the user inside the caller's transaction;
    returns how many."""
    rows = list(
        session.scalars(
            select(BrowserSession).where(
                BrowserSession.user_id == user_id, BrowserSession.expires_at > utcnow()
            )
        )
    )
    return _revoke_rows(session, rows, reason)


@module_api(MODULE)
def end_all(session: Session, user_id: str, *, ip: str | None) -> int:
    """Sign every browser of the user out ("sign out everywhere"); returns how many.
    Audited as LOGOUT_EVERYWHERE."""
    revoked = revoke_all(session, user_id, reason="sign_out_everywhere")
    admin_api.record_audit(
        session,
        "LOGOUT_EVERYWHERE",
        user_id=user_id,
        actor_id=user_id,
        details={"via": "console", "sessions": revoked},
        ip_address=ip,
    )
    return revoked


@module_api(MODULE)
def prune(session: Session, now: datetime | None = None) -> int:
    """Delete expired sessions (their revocations go with `flask tokens prune`)."""
    from sqlalchemy import delete

    result = session.execute(
        delete(BrowserSession).where(BrowserSession.expires_at < (now or utcnow()))
    )
    return result.rowcount or 0


__all__ = ["BrowserSession", "SignedIn", "end", "end_all", "resolve", "start"]
