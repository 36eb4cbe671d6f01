"""Accounts: registration, logins with lockout (docs/adr/0008-login-lockout.md).

Plain Python: every function takes a Session and never commits; the caller owns the
transaction. Password hashing (slow by design) happens outside write transactions, so a
login never holds SQLite's write lock while argon2 runs. The token revocation list is in
`revocations.py`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from app.admin import api as admin_api
from app.auth.accounts.errors import (  # noqa: F401  (callers know them as service.X)
    AccountLocked,
    EmailTaken,
    InvalidCredentials,
    TokenRevoked,
    UserNotFound,
    WrongPassword,
)
from app.auth.accounts.passwords import Hasher
from app.auth.events import UserRegistered
from app.auth.models import LoginThrottle, User
from app.kernel import events
from app.kernel.db import add_unique, utcnow
from app.kernel.emails import normalise_email  # the one normalisation (NFKC, folded, IDNA)
from app.kernel.ids import new_id

ROLES = ("user", "admin")


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
    add_unique(session, user, EmailTaken)
    admin_api.record_audit(
        session,
        "USER_REGISTERED" if role == "user" else "ADMIN_CREATED",
        user_id=user.user_id,
        actor_id=actor_id or user.user_id,
        details={"email": email, "role": role},
        ip_address=ip,
    )
    events.publish(
        session, UserRegistered(user_id=user.user_id, email=email, plan=user.plan, role=role)
    )
    return user


def get_user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise UserNotFound("No such user.")
    return user


# --- logins --------------------------------------------------------------------------

WHOLE_ACCOUNT = "*"  # LoginThrottle.address of the account-wide counter


@dataclass(frozen=True)
class LockoutPolicy:
    """Login throttling (docs/adr/0008-login-lockout.md).

    `max_failures` wrong passwords for one account from one address lock that address out
    of that account; `account_max_failures` from all addresses together lock the account.
    Failures count within `window`; each consecutive lock lasts twice the one before,
    from `first_lock` up to `max_lock`. `key` keys the account digest (the SECRET_KEY).
    """

    max_failures: int = 5
    account_max_failures: int = 50
    window: timedelta = timedelta(minutes=15)
    first_lock: timedelta = timedelta(minutes=1)
    max_lock: timedelta = timedelta(minutes=30)
    key: bytes = b""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LockoutPolicy:
        return cls(
            max_failures=config["LOGIN_MAX_FAILURES"],
            account_max_failures=config["LOGIN_ACCOUNT_MAX_FAILURES"],
            window=config["LOGIN_FAILURE_WINDOW"],
            first_lock=config["LOGIN_FIRST_LOCK"],
            max_lock=config["LOGIN_LOCK_DURATION"],
            key=str(config["SECRET_KEY"]).encode(),
        )

    def account(self, normalised_email: str) -> str:
        """The digest that names an account (existing or not) in LoginThrottle and audits."""
        data = normalised_email.encode("utf-8", "surrogatepass")
        return hmac.new(self.key, data, hashlib.sha256).hexdigest()

    def lock_for(self, lockouts: int) -> timedelta:
        return min(self.first_lock * 2 ** min(lockouts - 1, 30), self.max_lock)


@dataclass(frozen=True)
class LoginAttempt:
    """What checking the credentials found, before anything is written."""

    email: str
    account: str
    user_id: str | None
    password_ok: bool
    locked_until: datetime | None = None
    new_hash: str | None = None  # set when the stored hash used outdated parameters
    # The stored hash the password was verified against: a change since refuses the login.
    verified_hash: str | None = None


@dataclass(frozen=True)
class LoginOutcome:
    user: User | None
    locked_until: datetime | None = None
    # When the login's tokens are issued: read under the user's lock, so a password change
    # that commits after this transaction has a later marker (and revokes them).
    issued_at: datetime | None = None


def _locked_until(rows: Any, now: datetime) -> datetime | None:
    ends = [r.locked_until for r in rows if r.locked_until is not None and r.locked_until > now]
    return max(ends) if ends else None


def _throttles(account: str, ip: str | None) -> Any:
    return select(LoginThrottle).where(
        LoginThrottle.account == account,
        LoginThrottle.address.in_([ip or "unknown", WHOLE_ACCOUNT]),
    )


def check_credentials(
    session: Session,
    hasher: Hasher,
    email: str,
    password: str,
    *,
    policy: LockoutPolicy,
    ip: str | None,
    now: datetime,
) -> LoginAttempt:
    """Verify a password (read-only). A locked address or account is answered before any
    hash is verified, whether the email has an account or not; otherwise an unknown email
    costs one verification (of a dummy hash), exactly like a wrong password."""
    email = normalise_email(email)
    account = policy.account(email)
    locked = _locked_until(session.scalars(_throttles(account, ip)), now)
    if locked is not None:
        return LoginAttempt(email, account, None, False, locked_until=locked)
    row = session.execute(
        select(User.user_id, User.password_hash).where(User.email == email)
    ).first()
    ok = hasher.verify(row.password_hash if row else None, password)
    new_hash = hasher.hash(password) if ok and hasher.needs_rehash(row.password_hash) else None
    return LoginAttempt(
        email,
        account,
        row.user_id if row else None,
        ok,
        new_hash=new_hash,
        verified_hash=row.password_hash if ok else None,
    )


def _rows_for_update(
    session: Session, account: str, ip: str, user_id: str | None, now: datetime
) -> Any:
    """The address's and the account's throttles, created if missing, locked for update."""
    dialect = session.get_bind(LoginThrottle).dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(
        insert(LoginThrottle)
        .values(
            [
                {
                    "account": account,
                    "address": address,
                    "user_id": user_id,
                    "failures": 0,
                    "lockouts": 0,
                    "window_started_at": now,
                    "last_failure_at": now,
                }
                for address in (WHOLE_ACCOUNT, ip)
            ]
        )
        .on_conflict_do_nothing()
    )
    rows = session.scalars(
        _throttles(account, ip)
        .order_by(LoginThrottle.address)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    return {row.address: row for row in rows}


def _count_failure(row: LoginThrottle, limit: int, policy: LockoutPolicy, now: datetime) -> bool:
    """Count one failure on `row`; True when it locks."""
    quiet_since = max(row.last_failure_at, row.locked_until or row.last_failure_at)
    if now - quiet_since > policy.window:
        row.lockouts = 0  # quiet for a whole window (after its lock): the backoff starts over
    if now - row.window_started_at > policy.window:
        row.failures, row.window_started_at = 0, now
    row.failures += 1
    row.last_failure_at = now
    if row.failures < limit:
        return False
    row.lockouts += 1
    row.locked_until = now + policy.lock_for(row.lockouts)
    row.failures, row.window_started_at = 0, now
    return True


def attempted_identifier(attempt: LoginAttempt) -> dict[str, str]:
    """What an audit entry may say about an email nobody has: only its keyed digest. What
    was typed may be a password, also when it looks like an address (`P@ssw0rd.com`)."""
    return {"identifier_digest": attempt.account[:32]}


def settle_login(
    session: Session,
    attempt: LoginAttempt,
    policy: LockoutPolicy,
    *,
    ip: str | None,
    now: datetime,
) -> LoginOutcome:
    """Record a login attempt (inside a write transaction): count failures and lock, or
    clear the address's failures on success.

    The throttles are re-read under a row lock (PostgreSQL) or the write lock (SQLite), so
    concurrent failures all count and a lock set by a concurrent attempt is honoured.
    """
    if attempt.locked_until is not None:
        return LoginOutcome(None, locked_until=attempt.locked_until)
    address = ip or "unknown"
    if attempt.password_ok and attempt.user_id is not None:
        existing = session.scalars(
            _throttles(attempt.account, address)
            .order_by(LoginThrottle.address)  # the failure path's lock order
            .with_for_update()
            .execution_options(populate_existing=True)
        ).all()
        locked = _locked_until(existing, now)
        if locked is not None:
            return LoginOutcome(None, locked_until=locked)
        user = session.get(User, attempt.user_id, populate_existing=True, with_for_update=True)
        if user is None or user.password_hash != attempt.verified_hash:
            # Gone, or its password changed since it was checked: the password proved is
            # no longer the account's (and a rehash of it must not overwrite the new one).
            return LoginOutcome(None)
        for row in existing:
            if row.address == WHOLE_ACCOUNT:
                row.failures = 0  # the backoff level stays while an attack goes on
            else:
                session.delete(row)
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
        return LoginOutcome(user, issued_at=utcnow())

    rows = _rows_for_update(session, attempt.account, address, attempt.user_id, now)
    pair, whole = rows[address], rows[WHOLE_ACCOUNT]
    locked = _locked_until(rows.values(), now)
    if locked is not None:  # a concurrent attempt locked it meanwhile
        return LoginOutcome(None, locked_until=locked)
    details: dict[str, Any] = (
        {"reason": "wrong_password"}
        if attempt.user_id
        else {"reason": "unknown_email", **attempted_identifier(attempt)}
    )
    admin_api.record_audit(
        session,
        "LOGIN_FAILED",
        user_id=attempt.user_id,
        details={**details, "failures_from_address": pair.failures + 1},
        ip_address=ip,
    )
    for row, limit, scope in (
        (pair, policy.max_failures, "address"),
        (whole, policy.account_max_failures, "account"),
    ):
        if _count_failure(row, limit, policy, now):
            admin_api.record_audit(
                session,
                "ACCOUNT_LOCKED",
                user_id=attempt.user_id,
                details={
                    "scope": scope,
                    "locked_until": row.locked_until.isoformat(),
                    "lock": row.lockouts,
                    **({} if attempt.user_id else attempted_identifier(attempt)),
                },
                ip_address=ip,
            )
    if attempt.user_id is not None:
        user = session.get(User, attempt.user_id)
        if user is not None:  # what admins see: the account-wide state
            user.failed_logins, user.locked_until = whole.failures, whole.locked_until
    return LoginOutcome(None, locked_until=_locked_until(rows.values(), now))


def unlock(
    session: Session,
    email: str,
    policy: LockoutPolicy,
    *,
    actor_id: str | None,
    ip: str | None = None,
) -> tuple[User | None, int]:
    """Lift every lock and forget every failure of an email (account or not), audited.
    Returns the user (None when the email has no account) and how many records went."""
    email = normalise_email(email)
    account = policy.account(email)
    user = session.scalar(select(User).where(User.email == email))
    cleared = (
        session.execute(delete(LoginThrottle).where(LoginThrottle.account == account)).rowcount or 0
    )
    if user is not None and (user.failed_logins or user.locked_until is not None):
        user.failed_logins, user.locked_until = 0, None
    admin_api.record_audit(
        session,
        "ACCOUNT_UNLOCKED",
        user_id=user.user_id if user else None,
        actor_id=actor_id,
        details={
            "records_cleared": cleared,
            **({} if user else {"identifier_digest": account[:32]}),
        },
        ip_address=ip,
    )
    return user, cleared


@dataclass(frozen=True)
class PasswordChanged:
    user: User
    changed_at: datetime  # the marker: every token issued until then is revoked


def change_password(
    session: Session,
    user_id: str,
    new_hash: str,
    *,
    tokens_expire_by: datetime,
    ip: str | None,
) -> PasswordChanged:
    """Set a new password (hashed by the caller, outside the transaction) and end every
    session of the user: every API token issued until now (a marker in the revocation
    list) and every browser session. Audited as PASSWORD_CHANGED. The caller answers with a
    fresh token pair issued after the marker, or gives its browser a new session.

    The moment is read under the user's row lock, which logins and refreshes take too: one
    that held it before has an earlier `issued_at` (its tokens are revoked), one that takes
    it after sees the new password hash or the marker (and is refused)."""
    from app.auth.accounts import browser_sessions, revocations

    user = session.get(User, user_id, with_for_update=True, populate_existing=True)
    if user is None:
        raise UserNotFound()
    now = utcnow()
    user.password_hash = new_hash
    revocations.revoke_everything_before(
        session, user_id, now, reason="password_changed", expires_at=tokens_expire_by
    )
    ended = browser_sessions.revoke_all(session, user_id, reason="password_changed")
    admin_api.record_audit(
        session,
        "PASSWORD_CHANGED",
        user_id=user_id,
        actor_id=user_id,
        details={"browser_sessions_ended": ended},
        ip_address=ip,
    )
    return PasswordChanged(user, now.replace(microsecond=now.microsecond // 1000 * 1000))


def prune_login_throttles(session: Session, window: timedelta) -> int:
    """Delete throttle rows that no longer count: not locked, and no failure (nor lock)
    within the last `window`, so the next failure would start them over anyway. Without
    this, failures of emails nobody has would pile up. Returns how many."""
    quiet_since = utcnow() - window
    result = session.execute(
        delete(LoginThrottle).where(
            LoginThrottle.last_failure_at < quiet_since,
            or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until < quiet_since),
        )
    )
    return result.rowcount or 0
