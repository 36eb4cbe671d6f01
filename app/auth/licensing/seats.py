"""Seats: how many licenses a user may hold at once, and how many they hold.

The free plan has FREE_SEATS; a paid plan has its live subscription's seats. Seat changes of
one user run one at a time: each takes the user's row lock (`lock_user`) before counting —
except activation on SQLite, whose write transaction already excludes every other writer
(`writers_are_serial`): there the lock statement would only read the row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sqlalchemy import ColumnElement, String, bindparam, func, literal_column, select
from sqlalchemy.orm import Session

from app.auth.accounts.service import UserNotFound
from app.auth.models import License, Subscription, User
from app.kernel.db import execute_now, utcnow

# Seats of the plan that needs no subscription; paid plans take theirs from the subscription.
FREE_SEATS = 1
LIVE_SUBSCRIPTION = ("active", "past_due")


def constant(value: str) -> ColumnElement[str]:
    """`value` written into the SQL itself, not bound: SQLite re-prepares a statement on
    every execution when a bound value decides whether a partial index applies (`status !=
    ?` beside licenses' live client ids), and SQLAlchemy rewrites an expanding IN list
    (the live subscription statuses) on every execution. Only the code's own status names,
    never input."""
    if not (value.isascii() and value.replace("_", "").isalnum()):
        raise ValueError(f"not a status name: {value!r}")
    return literal_column(f"'{value}'", String())


def live_statuses() -> list[ColumnElement[str]]:
    """LIVE_SUBSCRIPTION as constants of the SQL (`constant`), for an IN list."""
    return [constant(status) for status in LIVE_SUBSCRIPTION]


# The statements of activation (the hot write path), built once with bind parameters:
# SQLAlchemy memoises each one's cache key on the object, so a call neither rebuilds the
# expression nor recomputes its key to find the compiled SQL.
_LIVE_SUBSCRIPTION = select(Subscription).where(
    Subscription.user_id == bindparam("user_id"), Subscription.status.in_(LIVE_SUBSCRIPTION)
)
SEATS_IN_USE = (
    select(func.count())
    .select_from(License)
    .where(
        License.user_id == bindparam("user_id"),
        License.status == constant("active"),
        License.expires_at > bindparam("now"),
    )
)


# Activation's own: the lock alone (no entity loaded), on the transaction's connection.
_LOCK_USER = select(User.user_id).where(User.user_id == bindparam("user_id")).with_for_update()


class Terms(Protocol):
    seats: int
    renews_at: datetime


def live_subscription(session: Session, user_id: str) -> Subscription | None:
    return session.scalar(_LIVE_SUBSCRIPTION, {"user_id": user_id})


def seats_in_use(session: Session, user_id: str, now: datetime | None = None) -> int:
    """Active, unexpired licenses of the user."""
    return session.scalar(SEATS_IN_USE, {"user_id": user_id, "now": now or utcnow()})


def seats_of(subscription: Terms | None) -> int:
    """Free plan: 1. Paid plans: the live subscription's seats."""
    return subscription.seats if subscription is not None else FREE_SEATS


def seat_limit(session: Session, user: User) -> int:
    return seats_of(live_subscription(session, user.user_id))


def seats_for(session: Session, user: User) -> dict[str, int]:
    return {"limit": seat_limit(session, user), "used": seats_in_use(session, user.user_id)}


def lock_user(session: Session, user_id: str) -> User:
    """The user's row, locked until the transaction ends (serialises seat changes)."""
    user = session.get(User, user_id, with_for_update=True, populate_existing=True)
    if user is None:
        raise UserNotFound("No such user.")
    return user


def lock_user_only(session: Session, user_id: str) -> None:
    """`lock_user` for a caller that needs the lock, not the row."""
    if execute_now(session, _LOCK_USER, {"user_id": user_id}).first() is None:
        raise UserNotFound("No such user.")


def writers_are_serial(session: Session) -> bool:
    """The database lets one write transaction run at a time: SQLite, whose write
    transactions hold its write lock from BEGIN IMMEDIATE on (`kernel.db.transaction`). Seat
    changes there run one at a time without a row lock (SQLite has no FOR UPDATE: the lock
    statement would only read the row)."""
    return session.get_bind(mapper=User).dialect.name == "sqlite"
