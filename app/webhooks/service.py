"""webhooks' business logic. Plain Python: takes a Session, never commits.

Endpoints are managed by admins (every change audited); deliveries are added in the
transaction of the event they carry (`fan_out`) and worked off by `delivery.Deliverer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, event, func, select
from sqlalchemy.orm import Session

from app.admin import api as admin_api
from app.kernel.db import utcnow
from app.kernel.errors import NotFound, ProblemError
from app.kernel.events import Envelope
from app.kernel.ids import new_id
from app.kernel.ownership import module_api
from app.kernel.pagination import newest_first, page_of
from app.webhooks import MODULE, secrets, urls
from app.webhooks.models import WebhookDelivery, WebhookEndpoint

# The event types an endpoint may subscribe to (docs/events.md). `audit.recorded` and other
# internal events never leave the service.
EVENT_TYPES = (
    "user.registered",
    "license.created",
    "license.status_changed",
    "license.deactivated",
    "subscription.granted",
    "subscription.renewed",
    "subscription.past_due",
    "subscription.lapsed",
    "subscription.cancelled",
    "order.paid",
    "order.refunded",
)
TEST_EVENT = "webhook.test"
PREVIOUS_SECRET_LIFETIME = timedelta(hours=24)
MAX_BODY_BYTES = 20_000  # larger envelopes are not sent (docs/events.md)


class WebhookNotFound(NotFound):
    code = "webhook_not_found"
    detail = "No such webhook endpoint."


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"
    detail = "No such delivery."


class UrlNotAllowed(ProblemError):
    status, code = 422, "webhook_url_refused"


class UnknownEventType(ProblemError):
    status, code = 422, "unknown_event_type"


class RotationInProgress(ProblemError):
    """A second rotation while the previous secret still signs: it would cut that one off
    before its promised 24 hours (only one previous secret is kept)."""

    status, code = 409, "webhook_rotation_in_progress"


def url_policy(config: Mapping[str, Any]) -> dict[str, bool]:
    return {
        "require_https": config.get("APP_ENV") == "production",
        "allow_private": bool(config.get("WEBHOOKS_ALLOW_PRIVATE")),
    }


def _check_url(config: Mapping[str, Any], url: str) -> None:
    try:
        urls.resolve(url, **url_policy(config))
    except urls.UrlRefused as exc:
        raise UrlNotAllowed(f"This URL cannot receive webhooks: {exc}.") from None


def _check_events(event_types: Sequence[str]) -> list[str]:
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown:
        raise UnknownEventType(
            f"Unknown event type(s): {', '.join(unknown)}. Known: {', '.join(EVENT_TYPES)}."
        )
    return sorted(set(event_types))


def _audit(
    session: Session,
    action: str,
    endpoint: WebhookEndpoint,
    actor_id: str | None,
    ip: str | None = None,
    **details: Any,
) -> None:
    admin_api.record_audit(
        session,
        action,
        actor_id=actor_id,
        details={"webhook_id": endpoint.webhook_id, "url": endpoint.url, **details},
        ip_address=ip,
    )


@dataclass(frozen=True)
class Created:
    endpoint: WebhookEndpoint
    secret: str  # shown once


def create_endpoint(
    session: Session,
    config: Mapping[str, Any],
    *,
    url: str,
    event_types: Sequence[str],
    description: str,
    actor_id: str,
    ip: str | None,
) -> Created:
    _check_url(config, url)
    secret = secrets.new_secret()
    endpoint = WebhookEndpoint(
        url=url,
        description=description,
        events=_check_events(event_types),
        enabled=True,
        secret=secrets.encrypt(config, secret),
    )
    session.add(endpoint)
    session.flush()
    _audit(session, "WEBHOOK_CREATED", endpoint, actor_id, ip, events=endpoint.events)
    return Created(endpoint, secret)


def get_endpoint(session: Session, webhook_id: str, *, for_update: bool = False) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, webhook_id, with_for_update=for_update or None)
    if endpoint is None:
        raise WebhookNotFound()
    return endpoint


def list_endpoints(session: Session) -> list[WebhookEndpoint]:
    return list(session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.created_at)))


def update_endpoint(
    session: Session,
    config: Mapping[str, Any],
    webhook_id: str,
    changes: Mapping[str, Any],
    *,
    actor_id: str,
    ip: str | None,
) -> WebhookEndpoint:
    endpoint = get_endpoint(session, webhook_id, for_update=True)
    if "url" in changes:
        _check_url(config, changes["url"])
        endpoint.url = changes["url"]
    if "events" in changes:
        endpoint.events = _check_events(changes["events"])
    if "description" in changes:
        endpoint.description = changes["description"]
    if "enabled" in changes:
        endpoint.enabled = bool(changes["enabled"])
        if endpoint.enabled:
            endpoint.disabled_reason, endpoint.failing_since = None, None
        else:
            endpoint.disabled_reason = "disabled by an admin"
    session.flush()
    _audit(session, "WEBHOOK_UPDATED", endpoint, actor_id, ip, changes=sorted(changes))
    return endpoint


def delete_endpoint(session: Session, webhook_id: str, *, actor_id: str, ip: str | None) -> None:
    endpoint = get_endpoint(session, webhook_id, for_update=True)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id))
    session.delete(endpoint)
    session.flush()
    _audit(session, "WEBHOOK_DELETED", endpoint, actor_id, ip)


def rotate_secret(
    session: Session,
    config: Mapping[str, Any],
    webhook_id: str,
    *,
    actor_id: str,
    ip: str | None,
    now: datetime | None = None,
) -> Created:
    """A new secret (shown once); the old one keeps signing alongside for 24 hours, so
    receivers can switch without losing events. A second rotation within those 24 hours is
    refused (409 webhook_rotation_in_progress): it would cut the old one off early."""
    endpoint = get_endpoint(session, webhook_id, for_update=True)
    now = now or utcnow()
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        raise RotationInProgress(
            "The secret was rotated less than 24 hours ago and the one before it signs until "
            f"{expires.isoformat(timespec='seconds')}; rotate again after that (rotating "
            "now would cut that secret off early). If the new secret has leaked, delete "
            "the endpoint and create it again.",
            previous_secret_expires_at=expires.isoformat(timespec="seconds"),
        )
    secret = secrets.new_secret()
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = now + PREVIOUS_SECRET_LIFETIME
    endpoint.secret = secrets.encrypt(config, secret)
    session.flush()
    _audit(session, "WEBHOOK_SECRET_ROTATED", endpoint, actor_id, ip)
    return Created(endpoint, secret)


def disable_endpoint(session: Session, endpoint: WebhookEndpoint, reason: str) -> None:
    """Stop delivering to an endpoint (it answered 410, or kept failing for days): audited,
    shown to admins as `disabled_reason`; an admin enables it again with PATCH."""
    endpoint.enabled = False
    endpoint.disabled_reason = reason
    session.flush()
    _audit(session, "WEBHOOK_DISABLED", endpoint, None, reason=reason)


# --- deliveries ------------------------------------------------------------------------


def _delivery(webhook_id: str, envelope: Envelope, now: datetime) -> WebhookDelivery:
    return WebhookDelivery(
        delivery_id=new_id("whd"),
        webhook_id=webhook_id,
        event_id=envelope.id,
        event_type=envelope.type,
        body=envelope.to_json(),
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )


@module_api(MODULE)
def fan_out(session: Session, envelope: Envelope) -> None:
    """One delivery per enabled endpoint subscribed to the event's type, in the publisher's
    transaction (a rolled-back change sends nothing)."""
    if envelope.type not in EVENT_TYPES:
        return
    now = utcnow()
    added = False
    for webhook_id, types in _enabled_endpoints(session):
        if envelope.type in types:
            session.add(_delivery(webhook_id, envelope, now))
            added = True
    if added:
        session.flush()


# fan_out runs in every transaction that publishes an event (activation, orders): the two
# columns it needs, in a statement built once, rather than every endpoint as an entity.
_ENABLED_ENDPOINTS = select(WebhookEndpoint.webhook_id, WebhookEndpoint.events).where(
    WebhookEndpoint.enabled.is_(True)
)
# Session.info: the enabled endpoints as this transaction read them (a paid order publishes
# two events in one transaction: one read). Forgotten when the transaction (or a savepoint)
# ends and when a flush writes an endpoint.
_ENDPOINTS_READ = "webhooks_enabled_endpoints"


def _enabled_endpoints(session: Session) -> list[tuple[str, list[str]]]:
    endpoints = session.info.get(_ENDPOINTS_READ)
    if endpoints is None or _endpoint_pending(session):
        if _endpoint_pending(session):
            session.flush()  # what the ORM's autoflush would have done before the read
        # Core on the tables' own connection, not the ORM's execute path (a fifth of an
        # event's cost on the hot paths): the rows are plain tuples anyway.
        connection = session.connection(bind_arguments={"mapper": WebhookEndpoint})
        endpoints = [
            (webhook_id, types) for webhook_id, types in connection.execute(_ENABLED_ENDPOINTS)
        ]
        session.info[_ENDPOINTS_READ] = endpoints
    return endpoints


def _endpoint_pending(session: Session) -> bool:
    """An endpoint changed in the session and not flushed yet (the read would autoflush)."""
    return any(
        isinstance(row, WebhookEndpoint)
        for rows in (session.new, session.dirty, session.deleted)
        for row in rows
    )


@event.listens_for(Session, "after_flush")
def _forget_endpoints_on_write(session: Session, _context: Any) -> None:
    if _ENDPOINTS_READ in session.info and _endpoint_pending(session):
        del session.info[_ENDPOINTS_READ]


@event.listens_for(Session, "after_transaction_end")
def _forget_endpoints(session: Session, ended: Any) -> None:
    if ended.parent is None or ended.nested:  # not a flush's own subtransaction
        session.info.pop(_ENDPOINTS_READ, None)


def send_test(session: Session, webhook_id: str) -> WebhookDelivery:
    """A `webhook.test` event for one endpoint (enabled or not: an admin checks the URL)."""
    endpoint = get_endpoint(session, webhook_id)
    now = utcnow()
    envelope = Envelope(
        id=new_id("evt"),
        type=TEST_EVENT,
        version=1,
        occurred_at=now,
        aggregate=None,
        payload={"webhook_id": webhook_id},
    )
    delivery = _delivery(endpoint.webhook_id, envelope, now)
    session.add(delivery)
    session.flush()
    return delivery


def get_delivery(session: Session, webhook_id: str, delivery_id: str) -> WebhookDelivery:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.webhook_id != webhook_id:
        raise DeliveryNotFound()
    return delivery


def redeliver(session: Session, webhook_id: str, delivery_id: str) -> WebhookDelivery:
    """Post a delivery again (whatever its state): due now, with a fresh set of attempts."""
    delivery = get_delivery(session, webhook_id, delivery_id)
    delivery.status, delivery.attempts = "pending", 0
    delivery.next_attempt_at, delivery.lease_until, delivery.leased_by = utcnow(), None, None
    session.flush()
    return delivery


def list_deliveries(
    session: Session, webhook_id: str, *, limit: int, after: tuple[Any, ...] | None
) -> tuple[list[WebhookDelivery], str | None]:
    get_endpoint(session, webhook_id)
    keys = (WebhookDelivery.created_at, WebhookDelivery.delivery_id)
    stmt = newest_first(
        select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id), keys, after, limit
    )
    rows = session.scalars(stmt).all()
    return page_of(rows, limit, lambda d: (d.created_at, d.delivery_id))


def prune_deliveries(session: Session, cutoff: datetime) -> int:
    """Delete finished deliveries (succeeded or failed) created before `cutoff`."""
    return session.execute(
        delete(WebhookDelivery).where(
            WebhookDelivery.status.in_(("succeeded", "failed")),
            WebhookDelivery.created_at < cutoff,
        )
    ).rowcount


@dataclass(frozen=True)
class Backlog:
    pending: int
    oldest_pending: datetime | None


def backlog(session: Session) -> Backlog:
    count, oldest = session.execute(
        select(func.count(), func.min(WebhookDelivery.created_at)).where(
            WebhookDelivery.status == "pending"
        )
    ).one()
    return Backlog(count, oldest)


def envelope_size_ok(body: str) -> bool:
    return len(body.encode()) <= MAX_BODY_BYTES


def delivery_view(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "delivery_id": delivery.delivery_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at if delivery.status == "pending" else None,
        "last_attempt_at": delivery.last_attempt_at,
        "last_status_code": delivery.last_status_code,
        "last_latency_ms": delivery.last_latency_ms,
        "last_error": delivery.last_error,
        "last_response": delivery.last_response,
        "created_at": delivery.created_at,
    }


def endpoint_view(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "webhook_id": endpoint.webhook_id,
        "url": endpoint.url,
        "description": endpoint.description,
        "events": list(endpoint.events),
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": endpoint.failing_since,
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
    }
