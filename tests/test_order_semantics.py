"""Orders over one subscription (ADR 0006): upgrades, downgrades, renewals, cancelling the
latest or an earlier order, retries — and the money always adds up.

The invariant is checked after every step of generated sequences (Hypothesis stateful
test, a fresh user per sequence): money charged minus refunded (the sandbox ledger) equals
the amounts of the orders that stand; the plan and seats the API shows are those of the
order that backs the subscription; seats used never exceed the limit; a license token
never outlives its license.
"""

from __future__ import annotations

import itertools
import json
import os
from datetime import timedelta
from pathlib import Path

import jwt
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, text, update

from app.auth.models import License, Subscription
from app.kernel.db import get_session, transaction, utcnow
from app.kernel.models import OutboxEvent
from app.kernel.ownership import OPERATOR, acting_as
from app.orders.models import Order
from tests.helpers import assert_problem, in_layout

PASSWORD = "correct horse battery"
PRICES = {"pro": 900, "enterprise": 2900}
EXAMPLES = int(os.environ.get("ORDER_STATE_EXAMPLES", "8"))
STEPS = int(os.environ.get("ORDER_STATE_STEPS", "10"))


def account(client, email: str) -> dict[str, str]:
    client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    pair = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    return {"Authorization": f"Bearer {pair.get_json()['access_token']}"}


def buy(client, who, key, plan="pro", seats=None):
    body = {"plan": plan, "payment_token": "tok_ok", **({"seats": seats} if seats else {})}
    return client.post("/api/v1/orders", json=body, headers={**who, "Idempotency-Key": key})


def ledger(path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def net_charged(app_config, order_ids: set[str]) -> int:
    """Charged minus refunded for these orders, read from the provider's ledger."""
    entries = ledger(app_config["SANDBOX_LEDGER"])
    charges = {
        e["charge_id"]: e["amount_cents"]
        for e in entries
        if e["type"] == "charge" and e["idempotency_key"] in order_ids
    }
    refunds = sum(
        e["amount_cents"] for e in entries if e["type"] == "refund" and e["charge_id"] in charges
    )
    return sum(charges.values()) - refunds


def make_due(app, user_id: str) -> None:
    with app.app_context(), acting_as(OPERATOR):
        session = get_session()
        with transaction(session):
            session.execute(
                update(Subscription)
                .where(Subscription.user_id == user_id, Subscription.status == "active")
                .values(renews_at=utcnow() - timedelta(minutes=1))
            )


# --- the sequence, as a user would do it ----------------------------------------


def test_cancelling_a_superseded_order_is_409_and_changes_nothing(app, app_config, client):
    ada = account(client, "ada@example.com")
    pro = buy(client, ada, "buy-pro", seats=3).get_json()
    enterprise = buy(client, ada, "buy-ent", plan="enterprise").get_json()
    assert pro["subscription_id"] == enterprise["subscription_id"]  # upgraded in place

    refused = client.post(f"/api/v1/orders/{pro['order_id']}/cancel", headers=ada)
    body = assert_problem(refused, 409, "order_superseded")
    assert body["backing_order_id"] == enterprise["order_id"]
    me = client.get("/api/v1/auth/me", headers=ada).get_json()
    assert (me["plan"], me["seats"]["limit"]) == ("enterprise", 25)
    orders = {
        o["order_id"]: o["status"]
        for o in client.get("/api/v1/orders", headers=ada).get_json()["items"]
    }
    assert orders == {pro["order_id"]: "paid", enterprise["order_id"]: "paid"}
    ids = {pro["order_id"], enterprise["order_id"]}
    assert net_charged(app_config, ids) == 2700 + 72500  # nothing refunded

    # Cancelling the order that backs the subscription refunds it and ends the subscription.
    done = client.post(f"/api/v1/orders/{enterprise['order_id']}/cancel", headers=ada)
    assert done.status_code == 200 and done.get_json()["status"] == "cancelled"
    me = client.get("/api/v1/auth/me", headers=ada).get_json()
    assert (me["plan"], me["subscription"]) == ("free", None)
    assert net_charged(app_config, ids) == 2700  # the pro order paid for the time it backed
    # Its subscription has ended: the earlier order has nothing left to cancel.
    assert_problem(
        client.post(f"/api/v1/orders/{pro['order_id']}/cancel", headers=ada),
        409,
        "order_not_cancellable",
    )


def test_a_purchase_settled_while_a_cancel_refunds_stands(app, app_config, client, monkeypatch):
    """A cancel accepted while its order backed the subscription is finished: the order is
    refunded in full; an upgrade that settled meanwhile keeps its terms (as if the customer
    had cancelled, then bought), and the refund's event says the subscription did not end."""
    ada = account(client, "ada@example.com")
    pro = buy(client, ada, "buy-pro", seats=3).get_json()
    gateway = app.extensions["payments"]
    refund, upgraded = gateway.refund, {}

    def refund_while_an_upgrade_settles(**call):
        if call["idempotency_key"].endswith(":cancel") and not upgraded:
            upgraded.update(buy(app.test_client(), ada, "buy-ent", plan="enterprise").get_json())
        return refund(**call)

    monkeypatch.setattr(gateway, "refund", refund_while_an_upgrade_settles)
    done = client.post(f"/api/v1/orders/{pro['order_id']}/cancel", headers=ada)
    assert done.status_code == 200 and done.get_json()["status"] == "cancelled"
    assert upgraded["status"] == "paid"

    me = client.get("/api/v1/auth/me", headers=ada).get_json()
    assert (me["plan"], me["seats"]["limit"]) == ("enterprise", 25)
    ids = {pro["order_id"], upgraded["order_id"]}
    assert net_charged(app_config, ids) == 72500  # what the entitlement was paid for
    with app.app_context(), acting_as(OPERATOR):
        refunded = get_session().scalars(
            select(OutboxEvent.payload).where(OutboxEvent.event_type == "order.refunded")
        )
        assert [(e["order_id"], e["subscription_ended"]) for e in refunded] == [
            (pro["order_id"], False)
        ]


def test_an_order_of_an_ended_subscription_cannot_end_the_next_one(app, app_config, client):
    ada = account(client, "ada@example.com")
    first = buy(client, ada, "k1").get_json()
    with app.app_context(), acting_as(OPERATOR):  # the first subscription lapsed
        session = get_session()
        with transaction(session):
            session.execute(update(Subscription).values(status="expired"))
    second = buy(client, ada, "k2", plan="enterprise").get_json()
    assert second["subscription_id"] != first["subscription_id"]
    assert_problem(
        client.post(f"/api/v1/orders/{first['order_id']}/cancel", headers=ada),
        409,
        "order_not_cancellable",
    )
    assert client.get("/api/v1/auth/me", headers=ada).get_json()["plan"] == "enterprise"


def test_a_renewal_backs_the_subscription_after_it(app, app_config, client, runner):
    ada = account(client, "ada@example.com")
    bought = buy(client, ada, "k", seats=2).get_json()
    make_due(app, bought["user_id"])
    assert "renewed 1" in runner.invoke(args=["subscriptions", "renew"]).output
    assert_problem(
        client.post(f"/api/v1/orders/{bought['order_id']}/cancel", headers=ada),
        409,
        "order_superseded",
    )
    [renewal] = [
        o
        for o in client.get("/api/v1/orders", headers=ada).get_json()["items"]
        if o["order_id"] != bought["order_id"]
    ]
    assert (
        client.post(f"/api/v1/orders/{renewal['order_id']}/cancel", headers=ada).status_code == 200
    )
    assert client.get("/api/v1/auth/me", headers=ada).get_json()["plan"] == "free"


# --- item 2: a failed settlement, for real, then the same key again ------------------------


def _break_settlement(app, url: str) -> None:
    """Make the transaction that settles an order fail: a trigger refuses its ORDER_PAID
    audit entry (on PostgreSQL at COMMIT, a deferred constraint trigger)."""
    table = in_layout("audit_logs", url)
    with app.app_context(), acting_as(OPERATOR):
        session = get_session()
        with transaction(session):
            if session.get_bind().dialect.name == "sqlite":
                session.execute(
                    text(
                        f"CREATE TRIGGER fail_settlement BEFORE INSERT ON {table} "
                        "WHEN NEW.action = 'ORDER_PAID' "
                        "BEGIN SELECT RAISE(ABORT, 'settlement refused by a test trigger'); END"
                    )
                )
            else:
                session.execute(
                    text(
                        "CREATE OR REPLACE FUNCTION public.fail_settlement() RETURNS trigger "
                        "LANGUAGE plpgsql AS $$ BEGIN "
                        "RAISE EXCEPTION 'settlement refused by a test trigger'; END $$"
                    )
                )
                session.execute(
                    text(
                        f"CREATE CONSTRAINT TRIGGER fail_settlement AFTER INSERT ON {table} "
                        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                        "WHEN (NEW.action = 'ORDER_PAID') EXECUTE FUNCTION public.fail_settlement()"
                    )
                )


def _repair_settlement(app, url: str) -> None:
    table = in_layout("audit_logs", url)
    with app.app_context(), acting_as(OPERATOR):
        session = get_session()
        with transaction(session):
            if session.get_bind().dialect.name == "sqlite":
                session.execute(text("DROP TRIGGER IF EXISTS fail_settlement"))
            else:
                session.execute(text(f"DROP TRIGGER IF EXISTS fail_settlement ON {table}"))
                session.execute(text("DROP FUNCTION IF EXISTS public.fail_settlement()"))


def test_a_retry_after_a_failed_settlement_replays_it_and_charges_once(
    app, app_config, client, database_url
):
    ada = account(client, "ada@example.com")
    _break_settlement(app, database_url)
    try:
        first = buy(client, ada, "settle-1")
        body = assert_problem(first, 502, "settlement_failed")
        entries = ledger(app_config["SANDBOX_LEDGER"])
        assert [e["type"] for e in entries] == ["charge", "refund"]
        assert body["refund_id"] == entries[1]["refund_id"] and body["order_id"]
    finally:
        _repair_settlement(app, database_url)
    # The same key again, now that settling would work: the first outcome, no new charge.
    again = buy(client, ada, "settle-1")
    assert again.status_code == 502 and again.get_json() == body
    assert len(ledger(app_config["SANDBOX_LEDGER"])) == 2
    with app.app_context(), acting_as(OPERATOR):
        orders = list(get_session().scalars(select(Order)))
    assert [(o.status, o.failure_code, o.refund_id) for o in orders] == [
        ("failed", "settlement_failed", body["refund_id"])
    ]
    assert client.get("/api/v1/auth/me", headers=ada).get_json()["plan"] == "free"
    assert buy(client, ada, "settle-2").status_code == 201  # a new key buys for real


# --- the invariant over generated sequences ------------------------------------------------

_users = itertools.count()


def _order_machine(app, app_config, client, runner):
    class Orders(RuleBasedStateMachine):
        """One user's purchases, retries, cancels, renewals and activations; a model of
        what should stand, checked against the API and the provider's ledger."""

        def __init__(self) -> None:
            super().__init__()
            self.email = f"user{next(_users)}@example.com"
            self.who = account(client, self.email)
            self.user_id = client.get("/api/v1/auth/me", headers=self.who).get_json()["user_id"]
            self.orders: dict[str, dict] = {}  # order id -> {plan, seats, amount, status}
            self.backing: str | None = None  # the order the live subscription comes from
            self.sent: list[tuple[str, dict, tuple[int, bytes]]] = []  # key, body, answer
            self.tokens: dict[str, str] = {}  # client id -> the token it holds
            self.keys = itertools.count()

        # -- steps --
        @rule(
            plan=st.sampled_from(["pro", "enterprise"]),
            seats=st.one_of(st.none(), st.integers(min_value=1, max_value=6)),
        )
        def purchase(self, plan, seats):
            key = f"{self.email}-{next(self.keys)}"
            body = {"plan": plan, "payment_token": "tok_ok", **({"seats": seats} if seats else {})}
            response = client.post(
                "/api/v1/orders", json=body, headers={**self.who, "Idempotency-Key": key}
            )
            assert response.status_code == 201, response.get_json()
            order = response.get_json()
            default = {"pro": 3, "enterprise": 25}[plan]
            assert (order["plan"], order["seats"]) == (plan, seats or default)
            self.orders[order["order_id"]] = {
                "plan": plan,
                "seats": seats or default,
                "amount": PRICES[plan] * (seats or default),
                "status": "paid",
            }
            self.backing = order["order_id"]
            self.sent.append((key, body, (201, response.get_data())))

        @precondition(lambda self: self.sent)
        @rule(data=st.data())
        def retry(self, data):
            key, body, (status, answer) = data.draw(st.sampled_from(self.sent))
            again = client.post(
                "/api/v1/orders", json=body, headers={**self.who, "Idempotency-Key": key}
            )
            assert (again.status_code, again.get_data()) == (status, answer)

        @precondition(lambda self: self.orders)
        @rule(data=st.data())
        def cancel(self, data):
            order_id = data.draw(st.sampled_from(sorted(self.orders)))
            model = self.orders[order_id]
            response = client.post(f"/api/v1/orders/{order_id}/cancel", headers=self.who)
            if model["status"] == "cancelled":
                assert response.status_code == 200
            elif order_id == self.backing:
                assert response.status_code == 200, response.get_json()
                model["status"], self.backing = "cancelled", None
            else:
                expected = "order_superseded" if self.backing else "order_not_cancellable"
                assert_problem(response, 409, expected)

        @precondition(lambda self: self.backing is not None)
        @rule()
        def renew(self):
            make_due(app, self.user_id)
            result = runner.invoke(args=["subscriptions", "renew"])
            assert "renewed 1," in result.output, result.output
            backing = self.orders[self.backing]
            with app.app_context(), acting_as(OPERATOR):
                renewal = get_session().scalar(
                    select(Order)
                    .where(Order.user_id == self.user_id, Order.kind == "renewal")
                    .order_by(Order.settled_at.desc())
                    .limit(1)
                )
            assert (renewal.plan, renewal.seats) == (backing["plan"], backing["seats"])
            self.orders[renewal.order_id] = {**backing, "status": "paid"}
            self.backing = renewal.order_id

        @rule(device=st.integers(min_value=0, max_value=6))
        def activate(self, device):
            client_id = f"{self.email}-box-{device}"
            response = client.post(
                "/api/v1/licenses/activate", json={"client_id": client_id}, headers=self.who
            )
            assert response.status_code in (200, 201, 409), response.get_json()
            if response.status_code != 409:
                self.tokens[client_id] = response.get_json()["token"]

        # -- what must hold after every step --
        @invariant()
        def money_adds_up(self):
            standing = sum(o["amount"] for o in self.orders.values() if o["status"] == "paid")
            assert net_charged(app_config, set(self.orders)) == standing

        @invariant()
        def statuses_match(self):
            items = client.get("/api/v1/orders?limit=100", headers=self.who).get_json()["items"]
            assert {o["order_id"]: o["status"] for o in items} == {
                k: o["status"] for k, o in self.orders.items()
            }

        @invariant()
        def plan_and_seats_come_from_the_backing_order(self):
            me = client.get("/api/v1/auth/me", headers=self.who).get_json()
            board = client.get("/api/v1/me/dashboard", headers=self.who).get_json()
            if self.backing is None:
                assert (me["plan"], me["seats"]["limit"], board["subscription"]) == (
                    "free",
                    1,
                    None,
                )
            else:
                backing = self.orders[self.backing]
                assert (me["plan"], me["seats"]["limit"]) == (backing["plan"], backing["seats"])
                sub = board["subscription"]
                assert (sub["plan"], sub["seats"]) == (backing["plan"], backing["seats"])
            assert board["seats"]["used"] <= board["seats"]["limit"]
            assert me["seats"]["used"] <= me["seats"]["limit"]

        @invariant()
        def no_token_outlives_its_license(self):
            with app.app_context(), acting_as(OPERATOR):
                expiry = {
                    lic.client_id: lic.expires_at
                    for lic in get_session().scalars(
                        select(License).where(
                            License.user_id == self.user_id, License.status == "active"
                        )
                    )
                }
            for client_id, token in list(self.tokens.items()):
                answer = client.post(
                    "/api/v1/licenses/validate", json={"token": token, "client_id": client_id}
                ).get_json()
                if answer.get("token"):
                    self.tokens[client_id] = token = answer["token"]
                if client_id in expiry:
                    claims = jwt.decode(token, options={"verify_signature": False})
                    assert claims["exp"] <= int(expiry[client_id].timestamp()), client_id

    return Orders


def test_orders_money_and_entitlement_invariant(app, app_config, client, runner):
    machine = _order_machine(app, app_config, client, runner)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )


# --- item 3: the token a client holds tells the truth offline ----------------------------


def test_validate_replaces_a_token_whose_license_changed(app_config, client, app):
    from datetime import timedelta as td

    app.config["LICENSE_TOKEN_TTL"] = td(days=400)  # longer than any period: exp = expiry
    ada = account(client, "ada@example.com")
    activated = client.post(
        "/api/v1/licenses/activate", json={"client_id": "laptop"}, headers=ada
    ).get_json()
    old = jwt.decode(activated["token"], options={"verify_signature": False})
    buy(client, ada, "k")  # pro: the license now ends with the 30-day period
    with app.app_context(), acting_as(OPERATOR):
        [lic] = get_session().scalars(select(License))
    assert old["exp"] > lic.expires_at.timestamp()  # the old token claims too much

    answer = client.post(
        "/api/v1/licenses/validate", json={"token": activated["token"], "client_id": "laptop"}
    ).get_json()
    assert answer["code"] == "VALID" and answer["token"]
    keys = jwt.PyJWKSet.from_dict(client.get("/.well-known/jwks.json").get_json())
    fresh = jwt.decode(
        answer["token"], keys.keys[0], algorithms=["EdDSA"], issuer="licensing-platform"
    )  # verifies offline, like examples/verify_license.py
    assert fresh["exp"] == int(lic.expires_at.timestamp())
    # A token that tells the truth is not replaced again.
    again = client.post(
        "/api/v1/licenses/validate", json={"token": answer["token"], "client_id": "laptop"}
    ).get_json()
    assert again["code"] == "VALID" and again["token"] is None


def test_tokens_are_refreshed_in_the_second_half_of_their_life(app, client):
    ada = account(client, "ada@example.com")
    buy(client, ada, "k", plan="enterprise")  # a year-long license
    token = client.post(
        "/api/v1/licenses/activate", json={"client_id": "laptop"}, headers=ada
    ).get_json()["token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 30 * 24 * 3600  # LICENSE_TOKEN_TTL_DAYS
    check = {"token": token, "client_id": "laptop"}
    assert client.post("/api/v1/licenses/validate", json=check).get_json()["token"] is None
    app.config["LICENSE_TOKEN_TTL"] = timedelta(days=90)  # now less than half is left
    fresh = client.post("/api/v1/licenses/validate", json=check).get_json()["token"]
    assert jwt.decode(fresh, options={"verify_signature": False})["exp"] > claims["exp"]
