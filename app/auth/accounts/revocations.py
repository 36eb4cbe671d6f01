"""The token revocation list: refresh tokens spent once, logouts, reuse detection.

Plain Python: every function takes a Session and never commits. Access and refresh tokens
themselves (flask-jwt-extended) are made in `tokens.py`, which asks `is_revoked` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.admin import api as admin_api
from app.auth.models import TokenRevocation, User
from app.kernel.db import utcnow


def is_revoked(session: Session, jti: str, family: str | None) -> bool:
    """True when the token or its family has been revoked (one primary-key look-up)."""
    keys = [jti] if not family else [jti, family]
    return (
        session.scalar(select(TokenRevocation.key).where(TokenRevocation.key.in_(keys)).limit(1))
        is not None
    )


def _revoke(
    session: Session, key: str, kind: str, user_id: str | None, reason: str, expires_at: datetime
) -> bool:
    """Insert a revocation; False when it already existed (also when a concurrent one won)."""
    if session.get(TokenRevocation, key) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(
                TokenRevocation(
                    key=key, kind=kind, user_id=user_id, reason=reason, expires_at=expires_at
                )
            )
    except IntegrityError:
        return False
    return True


@dataclass(frozen=True)
class RefreshOutcome:
    user: User | None
    reuse_detected: bool = False


def rotate_refresh(
    session: Session,
    *,
    jti: str,
    family: str,
    user_id: str,
    expires_at: datetime,
    family_expires_at: datetime,
    ip: str | None,
) -> RefreshOutcome:
    """Spend a refresh token (inside a write transaction).

    A token may be spent once. Presenting a spent one again — a replay, or two racing
    uses of one token — revokes its whole family: whoever holds a copy is locked out, and
    the rightful owner logs in again.
    """
    if session.get(TokenRevocation, family) is not None:
        return RefreshOutcome(None)
    if not _revoke(session, jti, "token", user_id, "rotated", expires_at):
        # Audited once per family, by whichever racing request revoked it.
        if _revoke(session, family, "family", user_id, "reuse_detected", family_expires_at):
            admin_api.record_audit(
                session,
                "TOKEN_REUSE_DETECTED",
                user_id=user_id,
                details={"family": family, "jti": jti},
                ip_address=ip,
            )
        return RefreshOutcome(None, reuse_detected=True)
    user = session.get(User, user_id)
    return RefreshOutcome(user)


def logout(
    session: Session,
    *,
    jti: str,
    family: str | None,
    user_id: str,
    family_expires_at: datetime,
    access_expires_at: datetime,
    ip: str | None,
) -> None:
    """Revoke the presented access token and its whole refresh family, at once."""
    _revoke(session, jti, "token", user_id, "logout", access_expires_at)
    if family:
        _revoke(session, family, "family", user_id, "logout", family_expires_at)
    admin_api.record_audit(session, "LOGOUT", user_id=user_id, actor_id=user_id, ip_address=ip)


def prune_revocations(session: Session, now: datetime | None = None) -> int:
    """Delete revocations of tokens that have expired anyway; returns how many."""
    result = session.execute(
        delete(TokenRevocation).where(TokenRevocation.expires_at < (now or utcnow()))
    )
    return result.rowcount or 0
