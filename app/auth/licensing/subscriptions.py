"""Subscriptions: grant, cancel, renew, past due, lapse — and the licenses they carry.

A subscription gives a user its plan's seats until `renews_at`; the licenses of a user with
a live subscription expire with it and are extended when it renews. Fewer seats (a smaller
plan, a cancellation, a lapse) suspend the newest licenses. The orders module drives the
renewals. Plain Python: every function takes a Session and never commits.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, bindparam, insert, inspect, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app.admin import api as admin_api
from app.auth.accounts.service import UserNotFound
from app.auth.events import (
    SubscriptionCancelled,
    SubscriptionGranted,
    SubscriptionLapsed,
    SubscriptionPastDue,
    SubscriptionRenewed,
)
from app.auth.licensing.seats import FREE_SEATS, LIVE_SUBSCRIPTION, live_subscription, lock_user
from app.auth.licensing.service import set_status
from app.auth.models import License, Subscription, User
from app.kernel import events
from app.kernel.db import execute_now, utcnow
from app.kernel.ids import new_id

# A grant's statements (every paid order runs one), built once and run on the transaction's
# connection (ADR 0016), not through the ORM: the lock with the user's plan, the live
# subscription's columns, the writes. The session's copy of a row they change, when it has
# one, takes the values written (`_written`), as the ORM's flush would have left it.
_LOCK_USER_PLAN = select(User.plan).where(User.user_id == bindparam("of_user")).with_for_update()
_SET_PLAN = (
    update(User)
    .where(User.user_id == bindparam("of_user"))
    .values(plan=bindparam("new_plan"), updated_at=bindparam("changed_at"))
)
_LIVE_ROW = select(Subscription.__table__).where(
    Subscription.user_id == bindparam("of_user"), Subscription.status.in_(LIVE_SUBSCRIPTION)
)
_INSERT_SUBSCRIPTION = insert(Subscription)
_CHANGE_SUBSCRIPTION = (
    update(Subscription)
    .where(Subscription.subscription_id == bindparam("of_subscription"))
    .values(
        plan=bindparam("new_plan"),
        seats=bindparam("new_seats"),
        status="active",
        renews_at=bindparam("new_renews_at"),
        version=bindparam("new_version"),
        updated_at=bindparam("changed_at"),
    )
)


@dataclass(frozen=True)
class SubscriptionSummary:
    """A subscription's terms as a value: what a grant leaves, what other modules read
    (auth's facade hands out this type), what its events carry."""

    subscription_id: str
    user_id: str
    plan: str
    status: str
    seats: int
    started_at: datetime
    renews_at: datetime
    version: int


def grant_subscription(
    session: Session,
    user_id: str,
    *,
    plan: str,
    seats: int,
    period: timedelta,
    actor_id: str | None = None,
    now: datetime | None = None,
) -> SubscriptionSummary:
    """Grant (or change) the user's live subscription; the user's plan follows it.

    An existing live subscription is updated in place: new plan and seats, renewal one
    period from now. Active, unexpired licenses are extended to the new renewal date;
    those above the new seat count are suspended, newest first.
    """
    if seats < 1:
        raise ValueError("a subscription has at least one seat")
    now = now or utcnow()
    session.flush()  # pending ORM changes first, as the ORM's reads did (autoflush)
    current_plan = execute_now(session, _LOCK_USER_PLAN, {"of_user": user_id}).scalar()
    if current_plan is None:
        raise UserNotFound("No such user.")
    live = execute_now(session, _LIVE_ROW, {"of_user": user_id}).first()
    renews_at = now + period
    # Licenses valid to the end of the period paid so far count and are extended, also when
    # that period has just ended (a renewal declined, the subscription past due).
    alive_from = now if live is None else min(now, live.renews_at)
    if current_plan != plan:  # as the ORM did: no UPDATE when the plan stays
        changed = {"plan": plan, "updated_at": utcnow()}
        execute_now(
            session,
            _SET_PLAN,
            {"of_user": user_id, "new_plan": plan, "changed_at": changed["updated_at"]},
        )
        _written(session, User, user_id, changed)
    subscription = _write_terms(
        session, user_id, live, plan=plan, seats=seats, now=now, renews_at=renews_at
    )
    suspended = _suspend_excess(
        session,
        user_id,
        keep=seats,
        actor_id=actor_id,
        reason="fewer_seats",
        now=now,
        alive_from=alive_from,
    )
    _extend_licenses(session, user_id, alive_from=alive_from, renews_at=renews_at, now=now)
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
    _announce(session, SubscriptionGranted, subscription)
    return subscription


def _write_terms(
    session: Session,
    user_id: str,
    live: Row[Any] | None,
    *,
    plan: str,
    seats: int,
    now: datetime,
    renews_at: datetime,
) -> SubscriptionSummary:
    """The live subscription (`live`: its row, None: there is none) with the grant's terms:
    a new one, or the same one changed in place."""
    if live is None:
        granted = SubscriptionSummary(
            new_id("sub"), user_id, plan, "active", seats, now, renews_at, 1
        )
        values = {name: getattr(granted, name) for name in _SUMMARY_FIELDS}
        execute_now(session, _INSERT_SUBSCRIPTION, values)
        return granted
    granted = SubscriptionSummary(
        live.subscription_id,
        user_id,
        plan,
        "active",
        seats,
        live.started_at,
        renews_at,
        live.version + 1,
    )
    changed_at = utcnow()
    execute_now(
        session,
        _CHANGE_SUBSCRIPTION,
        {
            "of_subscription": live.subscription_id,
            "new_plan": plan,
            "new_seats": seats,
            "new_renews_at": renews_at,
            "new_version": granted.version,
            "changed_at": changed_at,
        },
    )
    changed = {"plan": plan, "seats": seats, "status": "active", "renews_at": renews_at}
    changed |= {"version": granted.version, "updated_at": changed_at}
    _written(session, Subscription, live.subscription_id, changed)
    return granted


_SUMMARY_FIELDS = tuple(field.name for field in fields(SubscriptionSummary))


def _written(session: Session, entity: type, key: str, values: dict[str, Any]) -> None:
    """The session's copy of row `key` of `entity`, when it has loaded one, takes the
    `values` a statement wrote (and stays clean): no stale copy is left behind."""
    loaded = session.identity_map.get(inspect(entity).identity_key_from_primary_key((key,)))
    if loaded is not None:
        for name, value in values.items():
            set_committed_value(loaded, name, value)


# The user's active licenses valid at `alive_from` expire with the subscription's new
# renewal date: a statement built once, run on the transaction's connection (ADR 0016).
_EXTEND_LICENSES = (
    update(License)
    .where(
        License.user_id == bindparam("of_user"),
        License.status == "active",
        License.expires_at >= bindparam("alive_from"),
    )
    .values(
        expires_at=bindparam("renews_at"),
        version=License.version + 1,
        updated_at=bindparam("now"),
    )
    .returning(License.license_id, License.version)
)


def _extend_licenses(
    session: Session, user_id: str, *, alive_from: datetime, renews_at: datetime, now: datetime
) -> None:
    session.flush()  # the licenses' pending changes first (suspensions), as an autoflush did
    extended = execute_now(
        session,
        _EXTEND_LICENSES,
        {"of_user": user_id, "alive_from": alive_from, "renews_at": renews_at, "now": now},
    ).all()
    for license_id, version in extended:
        written = {"expires_at": renews_at, "version": version, "updated_at": now}
        _written(session, License, license_id, written)


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
    user = lock_user(session, user_id)
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
    _announce(session, SubscriptionCancelled, subscription)
    return subscription


# The user's active licenses that count against the seats, locked (ids and issue times: the
# newest beyond the seats are suspended): unexpired ones, those valid until a date, or all.
_ACTIVE = (License.user_id == bindparam("of_user"), License.status == "active")
_COUNTED = select(License.license_id, License.created_at).with_for_update()
_COUNTED_UNEXPIRED = _COUNTED.where(*_ACTIVE, License.expires_at > bindparam("since"))
_COUNTED_ALIVE_FROM = _COUNTED.where(*_ACTIVE, License.expires_at >= bindparam("since"))
_COUNTED_ANY = _COUNTED.where(*_ACTIVE)
_LICENSES_TO_SUSPEND = (
    select(License)
    .where(License.license_id.in_(bindparam("license_ids", expanding=True)))
    .with_for_update()
    .execution_options(populate_existing=True)
)


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
    session.flush()  # the caller's pending changes first, as the ORM's read did (autoflush)
    if alive_from is not None:
        counted = execute_now(
            session, _COUNTED_ALIVE_FROM, {"of_user": user_id, "since": alive_from}
        )
    elif include_expired:
        counted = execute_now(session, _COUNTED_ANY, {"of_user": user_id})
    else:
        counted = execute_now(session, _COUNTED_UNEXPIRED, {"of_user": user_id, "since": now})
    # Sorted here, not by ORDER BY: with it SQLite walks ix_licenses_status_created_at (the
    # active licenses of every user) instead of this user's through the (user_id, status, …)
    # index: 14 ms a paid order at 30,000 licenses, and growing with them (bench/README.md).
    newest_first = sorted(counted, key=lambda row: (row.created_at, row.license_id), reverse=True)
    excess = [row.license_id for row in newest_first[: max(0, len(newest_first) - keep)]]
    if not excess:
        return 0  # the usual case: nothing to load, nothing changed
    # Only the licenses to suspend are loaded (locked already, by the statement above).
    loaded = {
        license_.license_id: license_
        for license_ in session.scalars(_LICENSES_TO_SUSPEND, {"license_ids": excess})
    }
    for license_id in excess:
        set_status(
            session, loaded[license_id], "suspended", actor_id=actor_id, reason=reason, now=now
        )
    session.flush()
    return len(excess)


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
    # valid to the end of the paid period: extended
    _extend_licenses(
        session, sub.user_id, alive_from=expected_renews_at, renews_at=sub.renews_at, now=now
    )
    admin_api.record_audit(
        session,
        "SUBSCRIPTION_RENEWED",
        user_id=sub.user_id,
        actor_id=actor_id,
        details={"subscription_id": subscription_id, "renews_at": sub.renews_at.isoformat()},
    )
    session.flush()
    _announce(session, SubscriptionRenewed, sub)
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
    _announce(session, SubscriptionPastDue, sub)


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
        user = lock_user(session, candidate.user_id)
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
        _announce(session, SubscriptionLapsed, sub)
        count += 1
    session.flush()
    return count


def _announce(session: Session, event_class: type, sub: Subscription | SubscriptionSummary) -> None:
    """Publish `event_class` about `sub` as it is now (flushed), with its version."""
    session.flush()
    events.publish(
        session,
        event_class(
            subscription_id=sub.subscription_id,
            user_id=sub.user_id,
            plan=sub.plan,
            seats=sub.seats,
            status=sub.status,
            renews_at=sub.renews_at,
        ),
        aggregate_version=sub.version,
    )
