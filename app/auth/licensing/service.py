"""Licenses: activation, validation (the verdict), reading, status changes.

Plain Python: every function takes a Session and never commits. Activation runs in ONE
transaction with its audit entry. Races are settled by the database: the user's row is
locked for the seat count (FOR UPDATE on PostgreSQL; SQLite's write transactions are
serial), and the partial unique index on live client_ids refuses a second live license
for one client whatever the timing. Subscriptions (which change seats) are in
`subscriptions.py`, the seat count in `seats.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import Row, bindparam, insert, select, true, update
from sqlalchemy.orm import Session

from app.admin import api as admin_api
from app.auth.accounts.service import UserNotFound
from app.auth.events import LicenseCreated, LicenseDeactivated, LicenseStatusChanged
from app.auth.licensing.errors import (
    STATUSES,
    TRANSITIONS,
    ClientIdTaken,
    InvalidTransition,
    LicenseNotFound,
    LicenseSuspended,
    SeatLimitReached,
    SubscriptionPastDue,
    VersionConflict,
)
from app.auth.licensing.seats import (
    SEATS_IN_USE,
    constant,
    live_statuses,
    lock_user,
    lock_user_only,
    seat_limit,
    seats_in_use,
    seats_of,
    writers_are_serial,
)

# Re-exported (live_subscription, seats_for): accounts' /auth/me shows the subscription and
# the seats, and reaches licensing only through here.
from app.auth.licensing.seats import live_subscription as live_subscription
from app.auth.licensing.seats import seats_for as seats_for
from app.auth.licensing.signing import KeySet
from app.auth.models import License, Subscription, User
from app.kernel import events
from app.kernel.db import execute_now, read_first, utcnow
from app.kernel.errors import Conflict
from app.kernel.events import IntegrationEvent
from app.kernel.ids import new_id
from app.kernel.pagination import newest_first, page_of

LICENSE_LIFETIME = timedelta(days=365)

# Activation is the hot write path: its statements are built once (SQLAlchemy memoises
# each one's cache key on the object) and run on the transaction's connection, without the
# ORM's execute path, identity map or unit of work (ADR 0016).
LICENSE_COLUMNS = (
    License.license_id,
    License.user_id,
    License.client_id,
    License.status,
    License.created_at,
    License.expires_at,
    License.version,
)
_INSERT_LICENSE = insert(License)
# What a new license depends on, read in one statement once the user's row is locked (each
# statement reads what is committed by then): the live subscription's seats and renewal
# date (NULL without one), the seats taken (`seats.SEATS_IN_USE`) and, beside them, the
# client's live license if it has one (its columns NULL otherwise: the partial unique
# index on live client ids allows at most one, so the statement answers one row). The
# statuses are constants of the SQL (`seats.constant`): bound, they made SQLite prepare the
# whole statement again at each activation.
_LIVE = (Subscription.user_id == bindparam("user_id"), Subscription.status.in_(live_statuses()))
_TERMS_AND_SEATS_TAKEN = select(
    select(Subscription.seats).where(*_LIVE).limit(1).scalar_subquery().label("seats"),
    select(Subscription.renews_at).where(*_LIVE).limit(1).scalar_subquery().label("renews_at"),
    SEATS_IN_USE.scalar_subquery().label("taken"),
).subquery("terms")
_LIVE_LICENSE_OF_CLIENT = (
    select(*LICENSE_COLUMNS)
    .where(License.client_id == bindparam("client_id"), License.status != constant("revoked"))
    .subquery("live")
)
_ACTIVATION_READ = select(_TERMS_AND_SEATS_TAKEN, _LIVE_LICENSE_OF_CLIENT).select_from(
    _TERMS_AND_SEATS_TAKEN.outerjoin(_LIVE_LICENSE_OF_CLIENT, true())
)
# Where the write transaction is the lock, whether the user exists is read with the rest.
_ACTIVATION_READ_WITH_USER = _ACTIVATION_READ.add_columns(
    select(User.user_id).where(User.user_id == bindparam("user_id")).scalar_subquery().label("user")
)


# --- activation ----------------------------------------------------------------------


@dataclass(frozen=True)
class LicenseSummary:
    """A license's columns (LICENSE_COLUMNS) as a plain value: what activation answers, and
    what auth's facade hands other modules."""

    license_id: str
    user_id: str
    client_id: str
    status: str
    created_at: datetime
    expires_at: datetime
    version: int


@dataclass(frozen=True)
class Activation:
    license: LicenseSummary
    created: bool


def activate(
    session: Session, user_id: str, client_id: str, *, ip: str | None, now: datetime | None = None
) -> Activation:
    """Bind a license for `client_id` to the user, or return the one they already hold.

    One transaction: user exists, client_id free, a seat free, license inserted,
    LICENSE_CREATED audited. Either both rows commit or neither does.
    """
    now = now or utcnow()
    params = {"client_id": client_id, "user_id": user_id, "now": now}
    # Seat changes of one user run one at a time: the user's row is locked first, unless
    # the write transaction already excludes every other writer (SQLite).
    if writers_are_serial(session):
        read = execute_now(session, _ACTIVATION_READ_WITH_USER, params).one()
        if read.user is None:
            raise UserNotFound("No such user.")
    else:
        lock_user_only(session, user_id)
        read = execute_now(session, _ACTIVATION_READ, params).one()
    existing = read if read.license_id is not None else None
    if existing is not None and existing.expires_at <= now:
        # An expired license no longer holds its client: retire it, then issue a new one.
        set_status(
            session,
            get_license(session, existing.license_id),
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
        license_ = LicenseSummary(**{c.key: existing._mapping[c.key] for c in LICENSE_COLUMNS})
        return Activation(license_, created=False)

    # Read before an expired license was retired: it was not among the seats taken.
    terms = read if read.seats is not None else None  # the live subscription's, if any
    if terms is not None and terms.renews_at <= now:
        raise SubscriptionPastDue()  # its license would be expired at birth
    limit = seats_of(terms)
    if read.taken >= limit:
        raise SeatLimitReached(limit)

    license_ = LicenseSummary(
        license_id=new_id("lic"),
        user_id=user_id,
        client_id=client_id,
        status="active",
        created_at=now,
        expires_at=terms.renews_at if terms is not None else now + LICENSE_LIFETIME,
        version=1,
    )
    # ClientIdTaken: another account's activation of this client_id committed first.
    values = {**vars(license_), "updated_at": now}
    execute_now(session, _INSERT_LICENSE, values, conflict=ClientIdTaken)
    admin_api.record_audit(
        session,
        "LICENSE_CREATED",
        user_id=user_id,
        actor_id=user_id,
        details={"license_id": license_.license_id, "client_id": client_id},
        ip_address=ip,
    )
    events.publish(
        session,
        LicenseCreated(
            license_id=license_.license_id,
            user_id=user_id,
            client_id=client_id,
            status=license_.status,
            expires_at=license_.expires_at,
        ),
        aggregate_version=license_.version,
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


def set_status(
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
    """Move a license the caller has loaded (and locked) to `new_status`, audited."""
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
    if action == "LICENSE_DEACTIVATED":
        event: IntegrationEvent = LicenseDeactivated(
            license_id=license_.license_id,
            user_id=license_.user_id,
            client_id=license_.client_id,
            old_status=old,
            actor_id=actor_id,
        )
    else:
        event = LicenseStatusChanged(
            license_id=license_.license_id,
            user_id=license_.user_id,
            old_status=old,
            new_status=new_status,
            reason=reason,
            actor_id=actor_id,
        )
    events.publish(session, event, aggregate_version=license_.version)


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
        set_status(
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
        user = lock_user(session, current.user_id)
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
    events.publish(
        session,
        LicenseStatusChanged(
            license_id=license_id,
            user_id=license_.user_id,
            old_status=current.status,
            new_status=new_status,
            reason=reason,
            actor_id=actor_id,
        ),
        aggregate_version=license_.version,
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
