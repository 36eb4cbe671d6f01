"""The events auth publishes (part of its contract, re-exported by `app.auth.api`).

Payloads are documented for receivers in docs/events.md. A license's and a subscription's
events carry the row's version after the change as the aggregate version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from app.kernel.events import IntegrationEvent


@dataclass(frozen=True, kw_only=True)
class UserRegistered(IntegrationEvent):
    """An account was created (by sign-up, or an admin by the CLI: `role`)."""

    TYPE: ClassVar[str] = "user.registered"
    AGGREGATE: ClassVar[str] = "user"
    AGGREGATE_ID: ClassVar[str] = "user_id"

    user_id: str
    email: str
    plan: str
    role: str


@dataclass(frozen=True, kw_only=True)
class LicenseCreated(IntegrationEvent):
    """A license was issued to a client (activation)."""

    TYPE: ClassVar[str] = "license.created"
    AGGREGATE: ClassVar[str] = "license"
    AGGREGATE_ID: ClassVar[str] = "license_id"

    license_id: str
    user_id: str
    client_id: str
    status: str
    expires_at: datetime


@dataclass(frozen=True, kw_only=True)
class LicenseStatusChanged(IntegrationEvent):
    """A license moved between active, suspended and revoked: by an admin, by a change of
    seats (`reason`), or because an expired one was replaced. `actor_id` is who did it
    (None: the service itself)."""

    TYPE: ClassVar[str] = "license.status_changed"
    AGGREGATE: ClassVar[str] = "license"
    AGGREGATE_ID: ClassVar[str] = "license_id"

    license_id: str
    user_id: str
    old_status: str
    new_status: str
    reason: str
    actor_id: str | None


@dataclass(frozen=True, kw_only=True)
class LicenseDeactivated(IntegrationEvent):
    """The owner gave a license up (from the API or the app): revoked, seat freed."""

    TYPE: ClassVar[str] = "license.deactivated"
    AGGREGATE: ClassVar[str] = "license"
    AGGREGATE_ID: ClassVar[str] = "license_id"

    license_id: str
    user_id: str
    client_id: str
    old_status: str
    actor_id: str | None


@dataclass(frozen=True, kw_only=True)
class _SubscriptionEvent(IntegrationEvent):
    AGGREGATE: ClassVar[str] = "subscription"
    AGGREGATE_ID: ClassVar[str] = "subscription_id"

    subscription_id: str
    user_id: str
    plan: str
    seats: int
    status: str
    renews_at: datetime


@dataclass(frozen=True, kw_only=True)
class SubscriptionGranted(_SubscriptionEvent):
    """A subscription was granted, or changed to another plan or seat count (a purchase)."""

    TYPE: ClassVar[str] = "subscription.granted"


@dataclass(frozen=True, kw_only=True)
class SubscriptionRenewed(_SubscriptionEvent):
    """A subscription was extended by one period (`renews_at` is the new date)."""

    TYPE: ClassVar[str] = "subscription.renewed"


@dataclass(frozen=True, kw_only=True)
class SubscriptionPastDue(_SubscriptionEvent):
    """A renewal charge failed: the subscription is past due; its seats remain for now."""

    TYPE: ClassVar[str] = "subscription.past_due"


@dataclass(frozen=True, kw_only=True)
class SubscriptionLapsed(_SubscriptionEvent):
    """Past due beyond the grace period: the subscription ended, the user is on the free
    plan, licenses above its seats are suspended (each a license.status_changed)."""

    TYPE: ClassVar[str] = "subscription.lapsed"


@dataclass(frozen=True, kw_only=True)
class SubscriptionCancelled(_SubscriptionEvent):
    """The subscription was ended by a refunded order: back to the free plan."""

    TYPE: ClassVar[str] = "subscription.cancelled"
