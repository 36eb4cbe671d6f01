"""The token revocation list: refresh tokens spent once, logouts, reuse detection.

Plain Python: every function takes a Session and never commits. Access and refresh tokens
themselves (flask-jwt-extended) are made in `tokens.py`, which asks `is_revoked` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import String, and_, bindparam, delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.admin import api as admin_api
from app.auth.models import TokenRevocation, User
from app.kernel.db import UtcDateTime, read_first, utcnow

# Every authenticated request asks: one statement built once, read in one round trip on
# PostgreSQL (`read_first`: autocommit, outside the request's transaction).
# A token is revoked when its jti or family is listed, or when its user changed their
# password since it was issued (the user's marker, kind "user"; `issued_at` to the
# millisecond, as the marker's `revoked_at` is written; issued in the marker's very
# millisecond counts as before it: `change_password`'s own pair is issued a millisecond
# after its marker). Two fixed parameters rather than
# an expanding list: the compiled SQL is used as it is, not rewritten on every execution
# (a token without a family passes NULL, which matches nothing).
_REVOKED = (
    select(TokenRevocation.key)
    .where(
        or_(
            TokenRevocation.key.in_(
                [bindparam("jti", type_=String()), bindparam("family", type_=String())]
            ),
            and_(
                TokenRevocation.key == bindparam("marker", type_=String()),
                TokenRevocation.revoked_at >= bindparam("issued_at", type_=UtcDateTime()),
            ),
        )
    )
    .limit(1)
)

# The key of a user's "every token issued before" marker (kind "user"): a password change
# writes it, and a token issued before its `revoked_at` no longer counts.
USER_MARKER = "user:"


def is_revoked(
    session: Session,
    jti: str,
    family: str | None,
    *,
    user_id: str | None = None,
    issued_ms: int | None = None,
) -> bool:
    """True when the token or its family has been revoked, or (given its user and when it
    was issued, in epoch milliseconds) everything its user held before a password change.
    One primary-key look-up."""
    params = {"jti": jti, "family": family or None, "marker": None, "issued_at": None}
    if user_id is not None and issued_ms is not None:
        params["marker"] = USER_MARKER + user_id
        params["issued_at"] = datetime.fromtimestamp(issued_ms // 1000, UTC).replace(
            microsecond=issued_ms % 1000 * 1000
        )
    return read_first(session, _REVOKED, params) is not None


def issued_before_password_change(session: Session, user_id: str, issued_ms: int) -> bool:
    """True when the user changed their password since this token was issued."""
    marker = session.get(TokenRevocation, USER_MARKER + user_id, populate_existing=True)
    return marker is not None and issued_ms <= issued_ms_at(marker.revoked_at)


def issued_ms_at(moment: datetime) -> int:
    """`moment` in epoch milliseconds, exactly (no floating point)."""
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def revoke_everything_before(
    session: Session, user_id: str, now: datetime, *, reason: str, expires_at: datetime
) -> None:
    """Every access and refresh token of the user issued until `now` stops counting
    (kept until `expires_at`, when the last of them would have expired anyway)."""
    key = USER_MARKER + user_id
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # tokens say `ims`
    marker = session.get(TokenRevocation, key, with_for_update=True)
    if marker is None:
        session.add(
            TokenRevocation(
                key=key,
                kind="user",
                user_id=user_id,
                reason=reason,
                revoked_at=now,
                expires_at=expires_at,
            )
        )
    else:
        marker.reason, marker.revoked_at = reason, now
        marker.expires_at = max(marker.expires_at, expires_at)
    session.flush()


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
    password_changed: bool = False
    # When the new pair is issued: read under the user's lock, so a password change that
    # commits after this transaction has a later marker (and revokes the pair).
    issued_at: datetime | None = None


def rotate_refresh(
    session: Session,
    *,
    jti: str,
    family: str,
    user_id: str,
    issued_ms: int,
    expires_at: datetime,
    family_expires_at: datetime,
    ip: str | None,
) -> RefreshOutcome:
    """Spend a refresh token (inside a write transaction).

    A token may be spent once. Presenting a spent one again — a replay, or two racing
    uses of one token — revokes its whole family: whoever holds a copy is locked out, and
    the rightful owner logs in again. The user's row is locked first, as a password change
    locks it: a change that committed before is seen (its tokens refused), and one that
    commits after marks a later moment than the new pair's `issued_at`.
    """
    user = session.get(User, user_id, with_for_update=True, populate_existing=True)
    if user is None:
        return RefreshOutcome(None)
    if issued_before_password_change(session, user_id, issued_ms):
        return RefreshOutcome(None, password_changed=True)
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
    return RefreshOutcome(user, issued_at=utcnow())


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
