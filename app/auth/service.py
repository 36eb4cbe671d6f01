"""auth's business logic: accounts, logins with lockout, token revocation.

Plain Python: every function takes a Session and never commits; the caller owns the
transaction. Password hashing (slow by design) happens outside write transactions, so a
login never holds SQLite's write lock while argon2 runs.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.admin import api as admin_api
from app.auth.models import TokenRevocation, User
from app.auth.passwords import Hasher
from app.kernel.db import utcnow
from app.kernel.errors import Conflict, NotFound, ProblemError, Unauthorized
from app.kernel.ids import new_id

ROLES = ("user", "admin")


class EmailTaken(Conflict):
    code = "email_taken"

    def __init__(self) -> None:
        super().__init__("An account with this email already exists.")


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"

    def __init__(self) -> None:
        super().__init__("Invalid email or password.", headers={"WWW-Authenticate": "Bearer"})


class AccountLocked(ProblemError):
    status, code = 423, "account_locked"

    def __init__(self, until: datetime) -> None:
        seconds = max(1, int((until - utcnow()).total_seconds()) + 1)
        super().__init__(
            "Too many failed logins; the account is locked. Try again later.",
            headers={"Retry-After": str(seconds)},
            locked_until=until.isoformat(),
        )


class TokenRevoked(Unauthorized):
    code = "token_revoked"

    def __init__(self, detail: str = "The token has been revoked.") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class UserNotFound(NotFound):
    code = "user_not_found"


def normalise_email(email: str) -> str:
    """Emails are compared and stored trimmed, NFC-normalised and lower-cased."""
    return unicodedata.normalize("NFC", email.strip()).lower()


# --- accounts ------------------------------------------------------------------------


def register(
    session: Session,
    email: str,
    password_hash: str,
    *,
    ip: str | None = None,
    role: str = "user",
    actor_id: str | None = None,
) -> User:
    """Create an account with an already hashed password; EmailTaken when the email is used.

    The unique constraint settles races: of two concurrent registrations one inserts, the
    other's INSERT fails and becomes EmailTaken.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    email = normalise_email(email)
    if session.scalar(select(User.user_id).where(User.email == email)) is not None:
        raise EmailTaken()
    user = User(
        user_id=new_id("usr"), email=email, password_hash=password_hash, plan="free", role=role
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        raise EmailTaken() from None
    admin_api.record_audit(
        session,
        "USER_REGISTERED" if role == "user" else "ADMIN_CREATED",
        user_id=user.user_id,
        actor_id=actor_id or user.user_id,
        details={"email": email, "role": role},
        ip_address=ip,
    )
    return user


def get_user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise UserNotFound("No such user.")
    return user


# --- logins --------------------------------------------------------------------------


@dataclass(frozen=True)
class LockoutPolicy:
    max_failures: int = 5
    lock_for: timedelta = timedelta(minutes=30)


@dataclass(frozen=True)
class LoginAttempt:
    """What checking the credentials found, before anything is written."""

    email: str
    user_id: str | None
    password_ok: bool
    locked_until: datetime | None = None
    new_hash: str | None = None  # set when the stored hash used outdated parameters


@dataclass(frozen=True)
class LoginOutcome:
    user: User | None
    locked_until: datetime | None = None


def check_credentials(session: Session, hasher: Hasher, email: str, password: str) -> LoginAttempt:
    """Verify a password (read-only). Unknown emails cost the same time as wrong passwords."""
    email = normalise_email(email)
    row = session.execute(
        select(User.user_id, User.password_hash, User.locked_until).where(User.email == email)
    ).first()
    now = utcnow()
    if row is not None and row.locked_until is not None and row.locked_until > now:
        return LoginAttempt(email, row.user_id, False, locked_until=row.locked_until)
    ok = hasher.verify(row.password_hash if row else None, password)
    new_hash = hasher.hash(password) if ok and hasher.needs_rehash(row.password_hash) else None
    return LoginAttempt(email, row.user_id if row else None, ok, new_hash=new_hash)


def settle_login(
    session: Session, attempt: LoginAttempt, policy: LockoutPolicy, *, ip: str | None
) -> LoginOutcome:
    """Record a login attempt (inside a write transaction): reset or count failures, lock.

    The user's row is re-read under the write lock, so concurrent failures all count and
    a lock set by a concurrent attempt is honoured.
    """
    if attempt.user_id is None:
        admin_api.record_audit(
            session,
            "LOGIN_FAILED",
            details={"email": attempt.email, "reason": "unknown_email"},
            ip_address=ip,
        )
        return LoginOutcome(None)
    user = session.get(User, attempt.user_id, populate_existing=True, with_for_update=True)
    now = utcnow()
    if user is None:
        return LoginOutcome(None)
    if user.locked_until is not None and user.locked_until > now:
        return LoginOutcome(None, locked_until=user.locked_until)
    if attempt.password_ok:
        if user.failed_logins or user.locked_until is not None:
            user.failed_logins, user.locked_until = 0, None
        if attempt.new_hash:
            user.password_hash = attempt.new_hash
        admin_api.record_audit(
            session,
            "LOGIN_SUCCEEDED",
            user_id=user.user_id,
            actor_id=user.user_id,
            details={"rehashed": bool(attempt.new_hash)},
            ip_address=ip,
        )
        return LoginOutcome(user)
    user.failed_logins += 1
    failures = user.failed_logins
    admin_api.record_audit(
        session,
        "LOGIN_FAILED",
        user_id=user.user_id,
        details={"reason": "wrong_password", "consecutive_failures": failures},
        ip_address=ip,
    )
    if failures >= policy.max_failures:
        user.failed_logins, user.locked_until = 0, now + policy.lock_for
        admin_api.record_audit(
            session,
            "ACCOUNT_LOCKED",
            user_id=user.user_id,
            details={
                "consecutive_failures": failures,
                "locked_until": user.locked_until.isoformat(),
            },
            ip_address=ip,
        )
        return LoginOutcome(None, locked_until=user.locked_until)
    return LoginOutcome(None)


# --- token revocation ----------------------------------------------------------------


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
