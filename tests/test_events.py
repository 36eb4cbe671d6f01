"""Typed events (issue 16 item 6): one envelope, a typed class per event type, published
in the transaction of the change they report (docs/events.md)."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from app.kernel import events
from app.kernel.db import get_session, transaction
from app.kernel.events import Aggregate, Envelope, EnvelopeError, IntegrationEvent
from app.kernel.models import OutboxEvent
from app.kernel.ownership import OPERATOR, acting_as
from app.orders.api import OrderPaid, OrderRefunded

PASSWORD = "correct horse battery"


class Probed(IntegrationEvent, type="test.probed", aggregate="probe"):
    probe_id: str
    at: datetime
    count: int = 0


def test_an_envelope_survives_a_json_round_trip():
    envelope = Envelope(
        id="evt_1",
        type="order.paid",
        version=1,
        occurred_at=datetime(2026, 12, 1, 6, 0, 0, 123456, tzinfo=UTC),
        aggregate=Aggregate("order", "ord_1", 3),
        payload={"order_id": "ord_1", "amount_cents": 2700},
    )
    text = envelope.to_json()
    assert json.loads(text) == {
        "id": "evt_1",
        "type": "order.paid",
        "version": 1,
        "occurred_at": "2026-12-01T06:00:00.123456+00:00",
        "aggregate": {"type": "order", "id": "ord_1", "version": 3},
        "payload": {"order_id": "ord_1", "amount_cents": 2700},
    }
    assert Envelope.from_json(text) == envelope
    assert Envelope.from_json(text).occurred_at.tzinfo is not None


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"id": "evt_1"}',
        '{"id":"e","type":"t","version":"one","occurred_at":"2026-12-01T00:00:00Z",'
        '"aggregate":null,"payload":{}}',
        '{"id":"e","type":"t","version":1,"occurred_at":"yesterday","aggregate":null,"payload":{}}',
    ],
)
def test_a_malformed_envelope_is_refused_with_a_reason(text):
    with pytest.raises(EnvelopeError, match="not an event envelope"):
        Envelope.from_json(text)


def test_a_typed_event_is_its_payload_and_back():
    probe = Probed(probe_id="p1", at=datetime(2026, 12, 1, tzinfo=UTC), count=2)
    assert probe.payload() == {"probe_id": "p1", "at": "2026-12-01T00:00:00Z", "count": 2}
    assert Probed.from_payload(probe.payload()) == probe
    # A newer publisher's extra field is ignored; a missing one is an error with its name.
    assert Probed.from_payload({**probe.payload(), "colour": "red"}) == probe
    with pytest.raises(EnvelopeError, match="probe_id"):
        Probed.from_payload({"at": "2026-12-01T00:00:00Z"})
    assert probe.aggregate(7) == Aggregate("probe", "p1", 7)
    with pytest.raises(FrozenInstanceError):  # declaring it made it a frozen dataclass
        probe.count = 3  # type: ignore[misc]
    assert events.event_class_of("test.probed") is Probed


def test_one_type_and_version_has_one_class():
    with pytest.raises(ValueError, match="declared twice"):

        class Other(IntegrationEvent, type="test.probed"):
            probe_id: str


def _envelopes(app) -> list[Envelope]:
    with app.app_context(), acting_as(OPERATOR):
        rows = get_session().scalars(select(OutboxEvent).order_by(OutboxEvent.seq))
        return [events.envelope_of(row) for row in rows]


def test_a_typed_event_is_stored_as_its_envelope(app):
    with app.app_context():
        session = get_session()
        with acting_as("orders"), transaction(session):
            event_id = events.publish(
                session,
                Probed(probe_id="p1", at=datetime(2026, 12, 1, tzinfo=UTC)),
                aggregate_version=4,
            )
        with acting_as("orders"), pytest.raises(RuntimeError), transaction(session):
            events.publish(session, Probed(probe_id="p2", at=datetime(2026, 12, 1, tzinfo=UTC)))
            raise RuntimeError("the change rolls back")
    [envelope] = _envelopes(app)  # the rolled-back change published nothing
    assert (envelope.id, envelope.type, envelope.version) == (event_id, "test.probed", 1)
    assert envelope.aggregate == Aggregate("probe", "p1", 4)
    assert envelope.event() == Probed(probe_id="p1", at=datetime(2026, 12, 1, tzinfo=UTC))


def test_a_purchase_and_its_refund_publish_typed_order_events(client, app):
    client.post("/api/v1/auth/register", json={"email": "ada@example.com", "password": PASSWORD})
    login = {"email": "ada@example.com", "password": PASSWORD}
    token = client.post("/api/v1/auth/login", json=login).get_json()["access_token"]
    ada = {"Authorization": f"Bearer {token}"}
    placed = client.post(
        "/api/v1/orders",
        json={"plan": "pro", "payment_token": "tok_ok"},
        headers={**ada, "Idempotency-Key": "k1"},
    ).get_json()
    cancelled = client.post(f"/api/v1/orders/{placed['order_id']}/cancel", headers=ada)
    assert cancelled.status_code == 200

    paid, refunded = [e for e in _envelopes(app) if e.type.startswith("order.")]
    assert paid.event() == OrderPaid(
        order_id=placed["order_id"],
        user_id=paid.payload["user_id"],
        kind="purchase",
        plan="pro",
        seats=placed["seats"],
        amount_cents=placed["amount_cents"],
        currency=placed["currency"],
        subscription_id=placed["subscription_id"],
    )
    assert refunded.event() == OrderRefunded(
        order_id=placed["order_id"],
        user_id=paid.payload["user_id"],
        refund_id=refunded.payload["refund_id"],
        amount_cents=placed["amount_cents"],
        currency=placed["currency"],
        subscription_ended=True,
    )
    assert paid.aggregate.type == refunded.aggregate.type == "order"
    # Receivers drop a stale event by the aggregate's version: the refund is later.
    assert paid.aggregate.version < refunded.aggregate.version
    assert paid.occurred_at <= refunded.occurred_at
