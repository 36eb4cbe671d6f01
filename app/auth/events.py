"""The events auth publishes (part of its contract, re-exported by `app.auth.api`).

Payloads are documented for receivers in docs/events.md. A license's and a subscription's
events carry the row's version after the change as the aggregate version.
"""

from __future__ import annotations

from datetime import datetime

from app.kernel.events import IntegrationEvent


class UserRegistered(IntegrationEvent, type="user.registered"):
    """An account was created (by sign-up, or an admin by the CLI: `role`)."""

    user_id: str
    email: str
    plan: str
    role: str


class LicenseCreated(IntegrationEvent, type="license.created"):
    """A license was issued to a client (activation)."""

    license_id: str
    user_id: str
    client_id: str
    status: str
    expires_at: datetime


class LicenseStatusChanged(IntegrationEvent, type="license.status_changed"):
    """A license moved between active, suspended and revoked: by an admin, by a change of
    seats (`reason`), or because an expired one was replaced. `actor_id` is who did it
    (None: the service itself)."""

    license_id: str
    user_id: str
    old_status: str
    new_status: str
    reason: str
    actor_id: str | None


class LicenseDeactivated(IntegrationEvent, type="license.deactivated"):
    """The owner gave a license up (from the API or the app): revoked, seat freed."""

    license_id: str
    user_id: str
    client_id: str
    old_status: str
    actor_id: str | None


class _SubscriptionEvent(IntegrationEvent):
    subscription_id: str
    user_id: str
    plan: str
    seats: int
    status: str
    renews_at: datetime


class SubscriptionGranted(_SubscriptionEvent, type="subscription.granted"):
    """A subscription was granted, or changed to another plan or seat count (a purchase)."""


class SubscriptionRenewed(_SubscriptionEvent, type="subscription.renewed"):
    """A subscription was extended by one period (`renews_at` is the new date)."""


class SubscriptionPastDue(_SubscriptionEvent, type="subscription.past_due"):
    """A renewal charge failed: the subscription is past due; its seats remain for now."""


class SubscriptionLapsed(_SubscriptionEvent, type="subscription.lapsed"):
    """Past due beyond the grace period: the subscription ended, the user is on the free
    plan, licenses above its seats are suspended (each a license.status_changed)."""


class SubscriptionCancelled(_SubscriptionEvent, type="subscription.cancelled"):
    """The subscription was ended by a refunded order: back to the free plan."""
