"""auth's public facade: the only thing other modules (and the CLI) may import from auth."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from app.auth import MODULE
from app.auth.accounts import revocations, service
from app.auth.accounts.passwords import MAX_LENGTH, MIN_LENGTH, Hasher, hasher_from_config
from app.auth.accounts.schemas import SubscriptionOut, UserOut
from app.auth.events import (
    LicenseCreated,
    LicenseDeactivated,
    LicenseStatusChanged,
    SubscriptionCancelled,
    SubscriptionGranted,
    SubscriptionLapsed,
    SubscriptionPastDue,
    SubscriptionRenewed,
    UserRegistered,
)
from app.auth.licensing import errors, seats, subscriptions
from app.auth.licensing import service as licensing
from app.auth.licensing.schemas import LicenseOut
from app.auth.licensing.service import LicenseSummary
from app.auth.licensing.signing import SigningKeyError, generate_key_file
from app.auth.licensing.subscriptions import SubscriptionSummary
from app.kernel.ownership import module_api

EmailTaken = service.EmailTaken
# LicenseOut, SubscriptionOut and UserOut are the one response shape of a license, a
# subscription and a user: other modules' responses (admin, the dashboard) reuse them.
__all__ = [
    "EmailTaken",
    "Hasher",
    "LicenseCreated",
    "LicenseDeactivated",
    "LicenseOut",
    "LicenseStatusChanged",
    "SigningKeyError",
    "SubscriptionCancelled",
    "SubscriptionGranted",
    "SubscriptionLapsed",
    "SubscriptionOut",
    "SubscriptionPastDue",
    "SubscriptionRenewed",
    "SubscriptionSummary",
    "UserOut",
    "UserRegistered",
    "UserSummary",
    "generate_key_file",
    "hasher_from_config",
]


@dataclass(frozen=True)
class UserSummary:
    """What other modules may know about a user."""

    user_id: str
    email: str
    plan: str
    role: str
    created_at: datetime


_Summary = TypeVar("_Summary")
Config = Mapping[str, Any]  # the app's configuration


def _copy(summary: type[_Summary], row: object) -> _Summary:
    """The summary of a row: each of the summary's fields read off the row by its name."""
    return summary(**{field.name: getattr(row, field.name) for field in fields(summary)})


def _unless(missing: type[Exception], find: Callable[[], _Summary]) -> _Summary | None:
    """What `find` finds, or None when it raises `missing` (the look-ups of other modules
    ask "is there one?", not "fail if there is none")."""
    try:
        return find()
    except missing:
        return None


def _summary(user: object) -> UserSummary:
    return _copy(UserSummary, user)


def check_password_policy(password: str) -> str | None:
    """Why the password is unacceptable, or None when it is fine."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        return f"the password must be {MIN_LENGTH} to {MAX_LENGTH} characters long"
    return None


@module_api(MODULE)
def create_user(
    session: Session, email: str, password: str, *, hasher: Hasher, role: str = "user"
) -> UserSummary:
    """Create an account (inside the caller's transaction). Raises EmailTaken."""
    password_hash = hasher.hash(password)
    return _summary(service.register(session, email, password_hash, role=role, actor_id="cli"))


@module_api(MODULE)
def get_user(session: Session, user_id: str) -> UserSummary | None:
    """The user, or None."""
    return _unless(service.UserNotFound, lambda: _summary(service.get_user(session, user_id)))


@module_api(MODULE)
def unlock_email(
    session: Session, email: str, config: Config, *, actor_id: str | None, ip: str | None = None
) -> tuple[UserSummary | None, int]:
    """Lift the login locks of an email, account or not (inside the caller's transaction;
    audited as ACCOUNT_UNLOCKED). Returns the user, if any, and the records cleared."""
    policy = service.LockoutPolicy.from_config(config)
    user, cleared = service.unlock(session, email, policy, actor_id=actor_id, ip=ip)
    return (_summary(user) if user is not None else None), cleared


@module_api(MODULE)
def unlock_user(
    session: Session, user_id: str, config: Config, *, actor_id: str | None, ip: str | None = None
) -> UserSummary | None:
    """Lift the login locks of a user's account (audited); None when there is no such user."""
    user = get_user(session, user_id)
    if user is None:
        return None
    unlocked, _ = unlock_email(session, user.email, config, actor_id=actor_id, ip=ip)
    return unlocked


@module_api(MODULE)
def prune_token_revocations(session: Session) -> int:
    """Delete revocations whose tokens have expired anyway (inside the caller's transaction)."""
    return revocations.prune_revocations(session)


@module_api(MODULE)
def prune_login_throttles(session: Session, window: timedelta) -> int:
    """Delete login throttles that no longer count (inside the caller's transaction)."""
    return service.prune_login_throttles(session, window)


# --- licensing, for the orders and admin modules --------------------------------------

VersionConflict = errors.VersionConflict
InvalidTransition = errors.InvalidTransition
LicenseNotFound = errors.LicenseNotFound
StatusUpdate = licensing.StatusUpdate


def _subscription(sub: object | None) -> SubscriptionSummary | None:
    return None if sub is None else _copy(SubscriptionSummary, sub)


def _license(lic: object) -> LicenseSummary:
    return _copy(LicenseSummary, lic)


@module_api(MODULE)
def grant_subscription(
    session: Session,
    user_id: str,
    *,
    plan: str,
    seats: int,
    period: timedelta,
    actor_id: str | None = None,
) -> SubscriptionSummary:
    """Grant or change the user's subscription (inside the caller's transaction)."""
    return subscriptions.grant_subscription(
        session, user_id, plan=plan, seats=seats, period=period, actor_id=actor_id
    )


@module_api(MODULE)
def cancel_subscription(
    session: Session,
    user_id: str,
    *,
    actor_id: str | None = None,
    subscription_id: str | None = None,
) -> SubscriptionSummary | None:
    """End the user's live subscription (only if it is `subscription_id`, when given);
    licenses above the free seats are suspended, newest first."""
    return _subscription(
        subscriptions.cancel_subscription(
            session, user_id, actor_id=actor_id, subscription_id=subscription_id
        )
    )


@module_api(MODULE)
def lock_account(session: Session, user_id: str) -> None:
    """Lock the user's row until the caller's transaction ends: the user's subscription and
    seat changes (purchases, cancels, activations) then wait for it."""
    seats.lock_user(session, user_id)


@module_api(MODULE)
def seats_for(session: Session, user_id: str) -> dict[str, int]:
    """{"limit": …, "used": …} for the user."""
    return seats.seats_for(session, service.get_user(session, user_id))


@module_api(MODULE)
def live_subscription(session: Session, user_id: str) -> SubscriptionSummary | None:
    return _subscription(seats.live_subscription(session, user_id))


@module_api(MODULE)
def update_license_status(
    session: Session,
    license_id: str,
    status: str,
    expected_version: int,
    *,
    actor_id: str | None,
    ip: str | None = None,
) -> LicenseSummary:
    """Optimistically locked status change, audited. Raises VersionConflict,
    InvalidTransition or LicenseNotFound."""
    return _license(
        licensing.update_status(
            session, license_id, status, expected_version, actor_id=actor_id, ip=ip
        )
    )


@module_api(MODULE)
def batch_update_license_statuses(
    session: Session, updates: list[StatusUpdate], *, actor_id: str | None, ip: str | None = None
) -> list[LicenseSummary]:
    """All updates or none (the first failure raises; the caller's transaction rolls back)."""
    return [
        _license(x)
        for x in licensing.batch_update_statuses(session, updates, actor_id=actor_id, ip=ip)
    ]


@module_api(MODULE)
def get_license(session: Session, license_id: str) -> LicenseSummary | None:
    """The license, or None."""
    return _unless(
        errors.LicenseNotFound, lambda: _license(licensing.get_license(session, license_id))
    )


@module_api(MODULE)
def list_licenses(session: Session, user_id: str, limit: int = 100) -> list[LicenseSummary]:
    """The user's licenses, newest first."""
    items, _ = licensing.list_licenses(session, user_id, limit=limit, after=None)
    return [_license(x) for x in items]


@module_api(MODULE)
def due_subscriptions(
    session: Session, now: datetime, limit: int = 100
) -> list[SubscriptionSummary]:
    """Live subscriptions due for renewal at `now`, oldest first."""
    return [_subscription(s) for s in subscriptions.due_subscriptions(session, now, limit)]  # type: ignore[misc]


@module_api(MODULE)
def renew_subscription(
    session: Session,
    subscription_id: str,
    *,
    expected_renews_at: datetime,
    period: timedelta,
    actor_id: str | None = None,
) -> SubscriptionSummary | None:
    """Extend by one period (and the licenses with it); None if already renewed."""
    return _subscription(
        subscriptions.renew_subscription(
            session,
            subscription_id,
            expected_renews_at=expected_renews_at,
            period=period,
            actor_id=actor_id,
        )
    )


@module_api(MODULE)
def mark_subscription_past_due(
    session: Session, subscription_id: str, *, actor_id: str | None = None, reason: str
) -> None:
    subscriptions.mark_past_due(session, subscription_id, actor_id=actor_id, reason=reason)


@module_api(MODULE)
def lapse_past_due_subscriptions(
    session: Session, *, grace: timedelta, now: datetime, actor_id: str | None = None
) -> int:
    """End past-due subscriptions beyond the grace period; their licenses are suspended."""
    return subscriptions.lapse_past_due(session, grace=grace, now=now, actor_id=actor_id)
