"""Licenses, seats and subscriptions: auth's licensing logic.

Plain Python: every function takes a Session and never commits. Activation runs in ONE
transaction with its audit entry. Races are settled by the database: the user's row is
locked for the seat count (FOR UPDATE on PostgreSQL; SQLite's write transactions are
serial), and the partial unique index on live client_ids refuses a second live license
for one client whatever the timing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import Row, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.admin import api as admin_api
from app.auth.models import License, Subscription, User
from app.auth.service import UserNotFound
from app.auth.signing import KeySet
from app.kernel.db import read_first, utcnow
from app.kernel.errors import Conflict, NotFound, ProblemError
from app.kernel.ids import new_id
from app.kernel.pagination import newest_first, page_of

LICENSE_LIFETIME = timedelta(days=365)
# Seats of the plan that needs no subscription; paid plans take theirs from the subscription.
FREE_SEATS = 1
STATUSES = ("active", "suspended", "revoked")
LIVE_SUBSCRIPTION = ("active", "past_due")

# Allowed status changes. revoked is final.
TRANSITIONS = {
    "active": {"suspended", "revoked"},
    "suspended": {"active", "revoked"},
    "revoked": set(),
}


class ClientIdTaken(Conflict):
    code = "client_id_taken"

    def __init__(self) -> None:
        super().__init__("This client_id is already bound to another account's license.")


class SeatLimitReached(Conflict):
    code = "seat_limit_reached"

    def __init__(self, limit: int) -> None:
        super().__init__(f"All {limit} seat(s) of the plan are in use.", seats_limit=limit)


class SubscriptionPastDue(Conflict):
    code = "subscription_past_due"

    def __init__(self) -> None:
        super().__init__(
            "The subscription's paid period is over (its renewal is due or was declined); "
            "renew it or buy a plan, then activate."
        )


class LicenseSuspended(Conflict):
    code = "license_suspended"

    def __init__(self) -> None:
        super().__init__("This client's license is suspended.")


class LicenseNotFound(NotFound):
    code = "license_not_found"

    def __init__(self, license_id: str | None = None) -> None:
        extra = {"license_id": license_id} if license_id else {}
        super().__init__("No such license.", **extra)


class VersionConflict(ProblemError):
    status, code = 412, "version_conflict"

    def __init__(self, current_version: int | None = None, license_id: str | None = None) -> None:
        super().__init__(
            "The license was changed by someone else; reload it and try again.",
            current_version=current_version,
            license_id=license_id,
        )


class InvalidTransition(Conflict):
    code = "invalid_transition"

    def __init__(self, old: str, new: str, license_id: str | None = None) -> None:
        allowed = ", ".join(sorted(TRANSITIONS.get(old, ()))) or "none (final)"
        super().__init__(
            f"A license cannot go from {old} to {new}; from {old} it may go to: {allowed}.",
            from_status=old,
            to_status=new,
            license_id=license_id,
        )


# --- seats and subscriptions ---------------------------------------------------------


# The statements of activation (the hot write path), built once with bind parameters:
# SQLAlchemy memoises each one's cache key on the object, so a call neither rebuilds the
# expression nor recomputes its key to find the compiled SQL.
_LIVE_SUBSCRIPTION = select(Subscription).where(
    Subscription.user_id == bindparam("user_id"), Subscription.status.in_(LIVE_SUBSCRIPTION)
)
_SEATS_IN_USE = (
    select(func.count())
    .select_from(License)
    .where(
        License.user_id == bindparam("user_id"),
        License.status == "active",
        License.expires_at > bindparam("now"),
    )
)
_LIVE_LICENSE_OF_CLIENT = select(License).where(
    License.client_id == bindparam("client_id"), License.status != "revoked"
)


def live_subscription(session: Session, user_id: str) -> Subscription | None:
    return session.scalar(_LIVE_SUBSCRIPTION, {"user_id": user_id})


def seats_in_use(session: Session, user_id: str, now: datetime | None = None) -> int:
    """Active, unexpired licenses of the user."""
    return session.scalar(_SEATS_IN_USE, {"user_id": user_id, "now": now or utcnow()})


def seats_of(subscription: Subscription | None) -> int:
    """Free plan: 1. Paid plans: the live subscription's seats."""
    return subscription.seats if subscription is not None else FREE_SEATS


def seat_limit(session: Session, user: User) -> int:
    return seats_of(live_subscription(session, user.user_id))


def seats_for(session: Session, user: User) -> dict[str, int]:
    return {"limit": seat_limit(session, user), "used": seats_in_use(session, user.user_id)}


def grant_subscription(
    session: Session,
    user_id: str,
    *,
    plan: str,
    seats: int,
    period: timedelta,
    actor_id: str | None = None,
    now: datetime | None = None,
) -> Subscription:
    """Grant (or change) the user's live subscription; the user's plan follows it.

    An existing live subscription is updated in place: new plan and seats, renewal one
    period from now. Active, unexpired licenses are extended to the new renewal date;
    those above the new seat count are suspended, newest first.
    """
    if seats < 1:
        raise ValueError("a subscription has at least one seat")
    now = now or utcnow()
    user = _lock_user(session, user_id)
    subscription = live_subscription(session, user_id)
    renews_at = now + period
    # Licenses valid to the end of the period paid so far count and are extended, also when
    # that period has just ended (a renewal declined, the subscription past due).
    alive_from = now if subscription is None else min(now, subscription.renews_at)
    if subscription is None:
        subscription = Subscription(
            subscription_id=new_id("sub"),
            user_id=user_id,
            plan=plan,
            status="active",
            seats=seats,
            started_at=now,
            renews_at=renews_at,
        )
        session.add(subscription)
    else:
        subscription.plan, subscription.seats, subscription.status = plan, seats, "active"
        subscription.renews_at = renews_at
        subscription.version += 1
    user.plan = plan
    session.flush()
    suspended = _suspend_excess(
        session,
        user_id,
        keep=seats,
        actor_id=actor_id,
        reason="fewer_seats",
        now=now,
        alive_from=alive_from,
    )
    session.execute(
        update(License)
        .where(
            License.user_id == user_id,
            License.status == "active",
            License.expires_at >= alive_from,
        )
        .values(expires_at=renews_at, version=License.version + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    admin_api.record_audit(
        session,
        "SUBSCRIPTION_GRANTED",
        user_id=user_id,
        actor_id=actor_id,
        details={
            "subscription_id": subscription.subscription_id,
            "plan": plan,
            "seats": seats,
            "renews_at": renews_at.isoformat(),
            "suspended_licenses": suspended,
        },
    )
    return subscription


def cancel_subscription(
    session: Session,
    user_id: str,
    *,
    actor_id: str | None = None,
    now: datetime | None = None,
    subscription_id: str | None = None,
) -> Subscription | None:
    """End the user's live subscription (if it is `subscription_id`, when given); back to
    the free plan.

    Licenses above the free plan's seats are suspended, newest first, and each
    suspension is audited. Returns the cancelled subscription (None if there was none).
    """
    now = now or utcnow()
    user = _lock_user(session, user_id)
    subscription = live_subscription(session, user_id)
    if subscription is None or subscription_id not in (None, subscription.subscription_id):
        return None
    subscription.status = "cancelled"
    subscription.version += 1
    user.plan = "free"
    suspended = _suspend_excess(
        session,
        user_id,
        keep=FREE_SEATS,
        actor_id=actor_id,
        reason="subscription_cancelled",
        now=now,
    )
    admin_api.record_audit(
        session,
        "SUBSCRIPTION_CANCELLED",
        user_id=user_id,
        actor_id=actor_id,
        details={"subscription_id": subscription.subscription_id, "suspended_licenses": suspended},
    )
    session.flush()
    return subscription


def _suspend_excess(
    session: Session,
    user_id: str,
    *,
    keep: int,
    actor_id: str | None,
    reason: str,
    now: datetime,
    include_expired: bool = False,
    alive_from: datetime | None = None,
) -> int:
    """Suspend the user's active, unexpired licenses (or those valid until `alive_from`)
    beyond `keep`, newest first (each audited). The rows are locked first, so a concurrent
    change (an owner revoking one) is either seen or waits; a stale write never overrides
    it. Returns how many."""
    stmt = select(License).where(License.user_id == user_id, License.status == "active")
    if alive_from is not None:
        stmt = stmt.where(License.expires_at >= alive_from)
    elif not include_expired:
        stmt = stmt.where(License.expires_at > now)
    active = session.scalars(
        stmt.order_by(License.created_at.desc(), License.license_id.desc())
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    excess = active[: max(0, len(active) - keep)]
    for license_ in excess:
        _set_status(session, license_, "suspended", actor_id=actor_id, reason=reason, now=now)
    session.flush()
    return len(excess)


def _lock_user(session: Session, user_id: str) -> User:
    """The user's row, locked until the transaction ends (serialises seat changes)."""
    user = session.get(User, user_id, with_for_update=True, populate_existing=True)
    if user is None:
        raise UserNotFound("No such user.")
    return user


# --- activation ----------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    license: License
    created: bool


def activate(
    session: Session, user_id: str, client_id: str, *, ip: str | None, now: datetime | None = None
) -> Activation:
    """Bind a license for `client_id` to the user, or return the one they already hold.

    One transaction: user exists, client_id free, a seat free, license inserted,
    LICENSE_CREATED audited. Either both rows commit or neither does.
    """
    now = now or utcnow()
    _lock_user(session, user_id)  # seat changes of one user run one at a time
    existing = session.scalar(_LIVE_LICENSE_OF_CLIENT, {"client_id": client_id})
    if existing is not None and existing.expires_at <= now:
        # An expired license no longer holds its client: retire it, then issue a new one.
        _set_status(
            session,
            existing,
            "revoked",
            actor_id=user_id,
            reason="expired_replaced",
            now=now,
            ip=ip,
        )
        session.flush()
        existing = None
    if existing is not None:
        if existing.user_id != user_id:
            raise ClientIdTaken()
        if existing.status == "suspended":
            raise LicenseSuspended()
        return Activation(existing, created=False)

    subscription = live_subscription(session, user_id)  # its seats, and its renewal date
    if subscription is not None and subscription.renews_at <= now:
        raise SubscriptionPastDue()  # its license would be expired at birth
    limit = seats_of(subscription)
    if seats_in_use(session, user_id, now) >= limit:
        raise SeatLimitReached(limit)

    expires_at = subscription.renews_at if subscription is not None else now + LICENSE_LIFETIME
    license_ = License(
        license_id=new_id("lic"),
        user_id=user_id,
        client_id=client_id,
        status="active",
        created_at=now,
        updated_at=now,
        expires_at=expires_at,
        version=1,
    )
    session.add(license_)
    try:
        session.flush()
    except IntegrityError:
        # Another account's activation of this client_id committed first.
        raise ClientIdTaken() from None
    admin_api.record_audit(
        session,
        "LICENSE_CREATED",
        user_id=user_id,
        actor_id=user_id,
        details={"license_id": license_.license_id, "client_id": client_id},
        ip_address=ip,
    )
    return Activation(license_, created=True)


# --- reading -------------------------------------------------------------------------


def get_license(session: Session, license_id: str) -> License:
    license_ = session.get(License, license_id)
    if license_ is None:
        raise LicenseNotFound()
    return license_


# Validation is the hot path: its look-up is one Core statement, built once (SQLAlchemy
# memoises the cache key on the object, so each call finds the compiled SQL at once), run
# on the session's connection — no ORM identity map, loading or refresh on the way.
LICENSE_COLUMNS = (
    License.license_id,
    License.user_id,
    License.client_id,
    License.status,
    License.created_at,
    License.expires_at,
    License.version,
)
_LICENSE_BY_ID = select(*LICENSE_COLUMNS).where(License.license_id == bindparam("license_id"))


def license_for_validation(session: Session, license_id: str) -> Row[Any] | None:
    """The license's current row, read from the database on every call (read-after-write):
    a Row with the license's attributes, or None. One primary-key look-up; no writes (one
    round trip on PostgreSQL: `read_first`)."""
    return read_first(session, _LICENSE_BY_ID, {"license_id": license_id})


@dataclass(frozen=True)
class Verdict:
    """What validation decides about a license token: a value the route renders.

    `license` is the license's current row when the answer is about it (None for
    INVALID_TOKEN, NOT_FOUND and CLIENT_MISMATCH); `stale` says that the token, though
    VALID, no longer tells the truth offline and a fresh one should be handed out (ADR 0007).
    """

    code: str
    license_id: str | None = None
    license: Row[Any] | None = None
    stale: bool = False

    @property
    def valid(self) -> bool:
        return self.code == "VALID"


def validate(
    session: Session,
    keys: KeySet,
    token: str,
    client_id: str | None,
    *,
    now: datetime,
    token_ttl: timedelta,
) -> Verdict:
    """The verdict on `token` (for `client_id`, when given) against the license's current
    row (read-after-write: a change is seen by the very next validation). One look-up."""
    try:
        claims = keys.verify(token)
    except jwt.InvalidTokenError:
        return Verdict("INVALID_TOKEN")
    license_id = claims["license_id"]
    license_ = license_for_validation(session, license_id)
    if license_ is None:
        return Verdict("NOT_FOUND", license_id)
    if client_id is not None and client_id != license_.client_id:
        return Verdict("CLIENT_MISMATCH", license_id)
    if license_.status == "revoked":
        return Verdict("REVOKED", license_id, license_)
    if license_.status == "suspended":
        return Verdict("SUSPENDED", license_id, license_)
    if license_.expires_at <= now:
        return Verdict("EXPIRED", license_id, license_)
    return Verdict("VALID", license_id, license_, _stale(claims, license_, now, token_ttl))


def _stale(claims: dict[str, Any], license_: Any, now: datetime, token_ttl: timedelta) -> bool:
    """The token no longer tells the truth offline, or soon will not: the license's terms
    changed since it was signed (its version moved on: expiry, status), or it expires
    before the license and less than half of its lifetime (`token_ttl`) is left."""
    if claims.get("ver") != license_.version:
        return True
    exp = claims["exp"]
    return exp < int(license_.expires_at.timestamp()) and exp < (now + token_ttl / 2).timestamp()


def list_licenses(
    session: Session, user_id: str, *, limit: int, after: tuple[str] | None
) -> tuple[list[License], str | None]:
    """The user's licenses, newest first (keyset on the time-sortable id), and the cursor
    of the next page."""
    stmt = select(License).where(License.user_id == user_id)
    rows = session.scalars(newest_first(stmt, (License.license_id,), after, limit)).all()
    return page_of(rows, limit, lambda r: (r.license_id,))


# --- status changes ------------------------------------------------------------------


def _set_status(
    session: Session,
    license_: License,
    new_status: str,
    *,
    actor_id: str | None,
    reason: str,
    now: datetime,
    ip: str | None = None,
    action: str = "LICENSE_STATUS_CHANGED",
) -> None:
    old = license_.status
    license_.status = new_status
    license_.version += 1
    license_.updated_at = now
    admin_api.record_audit(
        session,
        action,
        user_id=license_.user_id,
        actor_id=actor_id,
        details={
            "license_id": license_.license_id,
            "client_id": license_.client_id,
            "old_status": old,
            "new_status": new_status,
            "reason": reason,
        },
        ip_address=ip,
    )


def deactivate(
    session: Session,
    user_id: str,
    license_id: str,
    *,
    ip: str | None,
    client_id: str | None = None,
    reason: str = "deactivated_by_owner",
) -> License:
    """The owner gives a license up: revoked, seat freed, audited. Others get 404, and so
    does a `client_id` (when given: the app's own call) that is not the license's."""
    license_ = session.get(License, license_id, with_for_update=True, populate_existing=True)
    if license_ is None or license_.user_id != user_id:
        raise LicenseNotFound()
    if client_id is not None and license_.client_id != client_id:
        raise LicenseNotFound()
    if license_.status != "revoked":
        _set_status(
            session,
            license_,
            "revoked",
            actor_id=user_id,
            reason=reason,
            now=utcnow(),
            ip=ip,
            action="LICENSE_DEACTIVATED",
        )
        session.flush()
    return license_


def update_status(
    session: Session,
    license_id: str,
    new_status: str,
    expected_version: int | None,
    *,
    actor_id: str | None,
    ip: str | None = None,
    reason: str = "admin",
) -> License:
    """Change a license's status if it is still at `expected_version` (None: whatever
    version it is at now — still checked by the UPDATE against a concurrent change).

    `UPDATE … WHERE version = :expected`; zero rows → VersionConflict (or LicenseNotFound).
    Forbidden transitions (see TRANSITIONS) → InvalidTransition.
    """
    if new_status not in STATUSES:
        raise ValueError(f"unknown status {new_status!r}")
    current = session.execute(
        select(License.status, License.version, License.user_id).where(
            License.license_id == license_id
        )
    ).first()
    if current is None:
        raise LicenseNotFound(license_id)
    if expected_version is None:
        expected_version = current.version
    if current.version != expected_version:
        raise VersionConflict(current.version, license_id)
    if new_status == current.status:
        return get_license(session, license_id)  # nothing to change, nothing to audit
    if new_status not in TRANSITIONS[current.status]:
        raise InvalidTransition(current.status, new_status, license_id)
    now = utcnow()
    if new_status == "active":
        # Back to active takes a seat: count under the user's lock, like an activation.
        user = _lock_user(session, current.user_id)
        limit = seat_limit(session, user)
        if seats_in_use(session, current.user_id, now) >= limit:
            raise SeatLimitReached(limit)
    result = session.execute(
        update(License)
        .where(License.license_id == license_id, License.version == expected_version)
        .values(status=new_status, version=License.version + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise VersionConflict(None, license_id)
    license_ = session.get(License, license_id, populate_existing=True)
    admin_api.record_audit(
        session,
        "LICENSE_STATUS_CHANGED",
        user_id=license_.user_id,
        actor_id=actor_id,
        details={
            "license_id": license_id,
            "old_status": current.status,
            "new_status": new_status,
            "reason": reason,
        },
        ip_address=ip,
    )
    return license_


@dataclass(frozen=True)
class StatusUpdate:
    license_id: str
    status: str
    expected_version: int | None = None


def batch_update_statuses(
    session: Session,
    updates: Sequence[StatusUpdate],
    *,
    actor_id: str | None,
    ip: str | None = None,
) -> list[License]:
    """Apply every update or none: the first failure raises and the caller rolls back."""
    ids = [u.license_id for u in updates]
    if len(set(ids)) != len(ids):
        raise Conflict("A license appears twice in the batch.", code="duplicate_license")
    return [
        update_status(
            session,
            u.license_id,
            u.status,
            u.expected_version,
            actor_id=actor_id,
            ip=ip,
            reason="batch",
        )
        for u in updates
    ]


# --- renewals (driven by the orders module) ------------------------------------------


def due_subscriptions(session: Session, now: datetime, limit: int) -> list[Subscription]:
    """Live subscriptions whose renewal date has come, oldest due first."""
    return list(
        session.scalars(
            select(Subscription)
            .where(Subscription.status.in_(LIVE_SUBSCRIPTION), Subscription.renews_at <= now)
            .order_by(Subscription.renews_at, Subscription.subscription_id)
            .limit(limit)
        )
    )


def renew_subscription(
    session: Session,
    subscription_id: str,
    *,
    expected_renews_at: datetime,
    period: timedelta,
    actor_id: str | None,
) -> Subscription | None:
    """Extend a subscription by one period from its renewal date, and its active licenses
    with it. None when it was already renewed (its renewal date moved on)."""
    sub = session.get(Subscription, subscription_id, with_for_update=True, populate_existing=True)
    if sub is None or sub.renews_at != expected_renews_at or sub.status not in LIVE_SUBSCRIPTION:
        return None
    sub.renews_at = expected_renews_at + period
    sub.status = "active"
    sub.version += 1
    now = utcnow()
    session.execute(
        update(License)
        .where(
            License.user_id == sub.user_id,
            License.status == "active",
            License.expires_at >= expected_renews_at,  # valid to the end of the paid period
        )
        .values(expires_at=sub.renews_at, version=License.version + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    admin_api.record_audit(
        session,
        "SUBSCRIPTION_RENEWED",
        user_id=sub.user_id,
        actor_id=actor_id,
        details={"subscription_id": subscription_id, "renews_at": sub.renews_at.isoformat()},
    )
    session.flush()
    return sub


def mark_past_due(
    session: Session, subscription_id: str, *, actor_id: str | None, reason: str
) -> None:
    """A renewal charge failed: the subscription is past due (its seats remain for now)."""
    sub = session.get(Subscription, subscription_id, with_for_update=True, populate_existing=True)
    if sub is None or sub.status != "active":
        return
    sub.status = "past_due"
    sub.version += 1
    admin_api.record_audit(
        session,
        "SUBSCRIPTION_PAST_DUE",
        user_id=sub.user_id,
        actor_id=actor_id,
        details={"subscription_id": subscription_id, "reason": reason},
    )
    session.flush()


def lapse_past_due(
    session: Session, *, grace: timedelta, now: datetime, actor_id: str | None
) -> int:
    """Past-due subscriptions beyond the grace period end; their licenses are suspended
    and the user is back on the free plan. Returns how many lapsed."""
    lapsed = list(
        session.scalars(
            select(Subscription).where(
                Subscription.status == "past_due", Subscription.renews_at <= now - grace
            )
        )
    )
    count = 0
    for candidate in lapsed:
        user = _lock_user(session, candidate.user_id)
        # Re-read under the lock: a payment that committed meanwhile has renewed it.
        sub = session.get(
            Subscription, candidate.subscription_id, with_for_update=True, populate_existing=True
        )
        if sub is None or sub.status != "past_due" or sub.renews_at > now - grace:
            continue
        sub.status = "expired"
        sub.version += 1
        user.plan = "free"
        suspended = _suspend_excess(
            session,
            sub.user_id,
            keep=0,
            actor_id=actor_id,
            reason="subscription_lapsed",
            now=now,
            include_expired=True,
        )
        admin_api.record_audit(
            session,
            "SUBSCRIPTION_LAPSED",
            user_id=sub.user_id,
            actor_id=actor_id,
            details={"subscription_id": sub.subscription_id, "suspended_licenses": suspended},
        )
        count += 1
    session.flush()
    return count
