"""Orders over HTTP on SQLite and PostgreSQL (README: Orders)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from app import create_app
from app.admin.models import AuditLog
from app.auth.models import License, Subscription, User
from app.kernel.db import get_session, transaction, utcnow
from app.kernel.models import OutboxEvent
from app.kernel.ownership import OPERATOR, acting_as
from app.orders.models import IdempotencyKey, Order
from tests.helpers import as_operator, assert_problem, rows

PASSWORD = "correct horse battery"


def account(client, email="ada@example.com") -> dict:
    client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    pair = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD}).get_json()
    return {"Authorization": f"Bearer {pair['access_token']}"}


def order(client, who, key, token="tok_ok", plan="pro", seats=None):
    body = {"plan": plan, "payment_token": token, **({"seats": seats} if seats else {})}
    return client.post("/api/v1/orders", json=body, headers={**who, "Idempotency-Key": key})


def ledger(app_config) -> list[dict]:
    path = Path(app_config["SANDBOX_LEDGER"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def operator(app, stmt) -> None:
    """`stmt` executed as the operator, in a transaction of its own."""
    as_operator(app, lambda session: session.execute(stmt))


def actions(app) -> list[str]:
    return [
        e.action for e in rows(app, select(AuditLog).order_by(AuditLog.timestamp, AuditLog.log_id))
    ]


def test_the_catalog(client):
    plans = {p["plan"]: p for p in client.get("/api/v1/plans").get_json()}
    assert set(plans) == {"free", "pro", "enterprise"}
    assert plans["pro"] == {
        "plan": "pro",
        "seats": 3,
        "max_seats": 50,
        "price_cents": 900,
        "currency": "EUR",
        "period_days": 30,
    }
    assert all(isinstance(p["price_cents"], int) for p in plans.values())


def test_the_full_purchase_flow(app, app_config, client):
    ada = account(client)
    response = order(client, ada, "buy-1", seats=3)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (
        body["plan"],
        body["seats"],
        body["amount_cents"],
        body["currency"],
        body["status"],
    ) == ("pro", 3, 2700, "EUR", "paid")
    assert body["subscription_id"].startswith("sub_")

    me = client.get("/api/v1/auth/me", headers=ada).get_json()
    assert me["plan"] == "pro" and me["seats"] == {"limit": 3, "used": 0}
    made = [
        client.post("/api/v1/licenses/activate", json={"client_id": f"box-{i}"}, headers=ada)
        for i in range(4)
    ]
    assert [r.status_code for r in made] == [201, 201, 201, 409]

    cancelled = client.post(f"/api/v1/orders/{body['order_id']}/cancel", headers=ada)
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "cancelled"
    statuses = {lic.client_id: lic.status for lic in rows(app, select(License))}
    assert statuses == {
        "box-0": "active",
        "box-1": "suspended",
        "box-2": "suspended",
    }  # newest first
    me = client.get("/api/v1/auth/me", headers=ada).get_json()
    assert (
        me["plan"] == "free"
        and me["subscription"] is None
        and me["seats"] == {"limit": 1, "used": 1}
    )

    money = ledger(app_config)
    assert [(e["type"], e["amount_cents"]) for e in money] == [("charge", 2700), ("refund", 2700)]
    assert actions(app).count("ORDER_PAID") == 1 and actions(app).count("ORDER_CANCELLED") == 1
    with app.app_context(), acting_as(OPERATOR):
        events = [
            e.event_type
            for e in get_session().scalars(select(OutboxEvent).order_by(OutboxEvent.seq))
            if e.event_type.startswith(("order.", "subscription."))
        ]
    assert events == [
        "subscription.granted",
        "order.paid",
        "subscription.cancelled",
        "order.refunded",
    ]
    again = client.post(f"/api/v1/orders/{body['order_id']}/cancel", headers=ada)
    assert again.status_code == 200 and len(ledger(app_config)) == 2  # idempotent: no second refund


def test_retries_replay_and_charge_once(app, app_config, client):
    ada = account(client)
    first = order(client, ada, "key-1")
    second = order(client, ada, "key-1")
    assert first.status_code == second.status_code == 201
    assert first.get_data() == second.get_data()
    assert len(ledger(app_config)) == 1
    assert len(rows(app, select(Order))) == 1
    conflict = order(client, ada, "key-1", plan="enterprise")
    assert_problem(conflict, 409, "idempotency_conflict")
    # Keys are per user: Bob's "key-1" is his own.
    assert order(client, account(client, "bob@example.com"), "key-1").status_code == 201


def test_the_idempotency_key_is_required_and_checked(client):
    ada = account(client)
    body = {"plan": "pro", "payment_token": "tok_ok"}
    assert_problem(
        client.post("/api/v1/orders", json=body, headers=ada), 400, "idempotency_key_required"
    )
    bad = client.post("/api/v1/orders", json=body, headers={**ada, "Idempotency-Key": "has space"})
    assert_problem(bad, 400, "idempotency_key_required")
    assert_problem(
        client.post("/api/v1/orders", json=body, headers={**ada, "Idempotency-Key": "x" * 256}), 400
    )


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"plan": "platinum", "payment_token": "tok_ok"}, "unknown_plan"),
        ({"plan": "free", "payment_token": "tok_ok"}, "unknown_plan"),
        ({"plan": "pro", "seats": 51, "payment_token": "tok_ok"}, "too_many_seats"),
        ({"plan": "pro", "seats": 0, "payment_token": "tok_ok"}, "validation_error"),
        ({"plan": "pro"}, "validation_error"),
        ({"plan": "pro", "payment_token": "tok_ok", "amount_cents": 1}, "validation_error"),
    ],
)
def test_bad_orders_are_422(client, payload, code):
    ada = account(client)
    response = client.post("/api/v1/orders", json=payload, headers={**ada, "Idempotency-Key": "k"})
    assert_problem(response, 422, code)


def test_a_declined_payment(app, app_config, client):
    ada = account(client)
    response = order(client, ada, "dec-1", token="tok_declined")
    body = assert_problem(response, 402, "payment_declined")
    [failed] = rows(app, select(Order))
    assert (failed.order_id, failed.status, failed.failure_code) == (
        body["order_id"],
        "failed",
        "payment_declined",
    )
    assert "ORDER_PAYMENT_DECLINED" in actions(app)
    replay = order(client, ada, "dec-1", token="tok_declined")
    assert replay.status_code == 402 and replay.get_json() == body
    assert ledger(app_config) == []
    assert client.get("/api/v1/auth/me", headers=ada).get_json()["plan"] == "free"


def test_provider_down_is_502_and_the_key_can_be_retried(app, app_config, client):
    ada = account(client)
    assert_problem(
        order(client, ada, "down-1", token="tok_unavailable"), 502, "payment_unavailable"
    )
    assert [o.status for o in rows(app, select(Order))] == ["failed"]
    # Nothing was charged, so the same key may try again (here with a working card).
    assert ledger(app_config) == []
    retry = order(client, ada, "down-1", token="tok_ok")
    assert retry.status_code == 201
    assert [o.status for o in rows(app, select(Order).order_by(Order.order_id))] == [
        "failed",
        "paid",
    ]
    assert len(ledger(app_config)) == 1


def test_after_a_502_the_key_still_names_its_order(app, app_config, client):
    """Nothing was charged, so the key may be retried — for the same order (a new card is
    fine), never for another plan or seat count (found by the outside test: pro/3 that hit
    a 502, then enterprise/30 with the same key, was charged 87,000)."""
    ada = account(client)
    first = order(client, ada, "k-502", token="tok_unavailable", plan="pro", seats=3)
    assert_problem(first, 502, "payment_unavailable")
    assert_problem(
        order(client, ada, "k-502", token="tok_ok", plan="enterprise", seats=30),
        409,
        "idempotency_conflict",
    )
    assert_problem(
        order(client, ada, "k-502", token="tok_ok", plan="pro", seats=4),
        409,
        "idempotency_conflict",
    )
    assert ledger(app_config) == []
    retry = order(client, ada, "k-502", token="tok_ok", plan="pro", seats=3)
    assert retry.status_code == 201, retry.get_json()
    assert (retry.get_json()["plan"], retry.get_json()["seats"]) == ("pro", 3)
    assert order(client, ada, "k-502", token="tok_ok", plan="pro", seats=3).get_json() == (
        retry.get_json()
    )
    assert [e["amount_cents"] for e in ledger(app_config)] == [retry.get_json()["amount_cents"]]


def test_a_failure_after_the_charge_is_refunded(app, app_config, client, monkeypatch):
    from app.orders import service

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure while granting the subscription")

    ada = account(client)
    monkeypatch.setattr(service.auth_api, "grant_subscription", broken)
    failed_body = assert_problem(order(client, ada, "comp-1"), 502, "settlement_failed")
    money = ledger(app_config)
    assert [e["type"] for e in money] == ["charge", "refund"]
    assert (
        money[1]["charge_id"] == money[0]["charge_id"]
        and money[1]["amount_cents"] == money[0]["amount_cents"]
    )
    [failed] = rows(app, select(Order))
    assert (failed.status, failed.failure_code, failed.refund_id) == (
        "failed",
        "settlement_failed",
        money[1]["refund_id"],
    )
    assert "ORDER_PAID" not in actions(app)
    [refunded] = rows(app, select(AuditLog).where(AuditLog.action == "ORDER_REFUNDED"))
    assert refunded.details["reason"] == "compensation"
    assert rows(app, select(Subscription)) == []
    with app.app_context(), acting_as(OPERATOR):
        published = get_session().scalars(select(OutboxEvent.event_type)).all()
    assert published == ["user.registered"]  # no order.paid, no subscription.granted

    assert failed_body["refund_id"] == money[1]["refund_id"]

    monkeypatch.undo()
    retry = order(client, ada, "comp-1")  # the same key replays the outcome: no new charge
    assert retry.status_code == 502 and retry.get_json() == failed_body
    assert order(client, ada, "comp-2").status_code == 201  # a new key buys for real
    assert [e["type"] for e in ledger(app_config)] == ["charge", "refund", "charge"]


def test_an_outage_during_the_settlement_leaves_the_purchase_to_settle_later(
    app, app_config, client, runner, monkeypatch
):
    """(outside test: a connection dropped during the settlement refunded the purchase) The
    database goes away after the charge, while the order is settled: no refund — the order
    stays pending with its charge, and once the lease ends a retry with the same key settles
    it with that very charge: the customer gets what they paid for, charged once."""
    from sqlalchemy.exc import OperationalError

    from app.orders import service

    def outage(*args, **kwargs):
        raise OperationalError("SELECT 1", None, ConnectionError("server closed the connection"))

    ada = account(client)
    monkeypatch.setattr(service.auth_api, "grant_subscription", outage)
    assert_problem(order(client, ada, "blip"), 503, "database_unavailable")
    monkeypatch.undo()
    assert [e["type"] for e in ledger(app_config)] == ["charge"]
    [pending] = rows(app, select(Order))
    assert pending.status == "pending"

    operator(app, update(IdempotencyKey).values(locked_until=utcnow() - timedelta(seconds=1)))
    retry = order(client, ada, "blip")
    assert retry.status_code == 201 and retry.get_json()["status"] == "paid", retry.get_json()
    money = ledger(app_config)
    assert [e["type"] for e in money] == ["charge"]  # the same charge, not a second one
    [paid] = rows(app, select(Order))
    assert (paid.status, paid.charge_id) == ("paid", money[0]["charge_id"])
    assert len(rows(app, select(Subscription))) == 1


def test_a_refund_left_unrecorded_by_an_outage_is_recorded_by_recovery(
    app, app_config, client, runner, monkeypatch
):
    """The settlement fails after the charge (not for the database: a bug, say), the refund
    goes through, and then the database goes away before the refund is recorded. The client
    never retries; once the lease ends, `orders recover` records the refund the provider
    already made."""
    from sqlalchemy.exc import OperationalError

    from app.orders import service

    def broken(*args, **kwargs):
        raise RuntimeError("the settlement broke")

    def outage(*args, **kwargs):
        raise OperationalError("SELECT 1", None, ConnectionError("server closed the connection"))

    ada = account(client)
    monkeypatch.setattr(service.auth_api, "grant_subscription", broken)
    monkeypatch.setattr(service, "fail", outage)
    assert_problem(order(client, ada, "outage"), 500, "internal_error")
    monkeypatch.undo()
    assert [e["type"] for e in ledger(app_config)] == ["charge", "refund"]
    [pending] = rows(app, select(Order))
    assert pending.status == "pending"

    within = runner.invoke(args=["orders", "recover"])
    assert within.output == "settled 0, refunded 0, failed 0, skipped 0\n"
    operator(app, update(IdempotencyKey).values(locked_until=utcnow() - timedelta(seconds=1)))
    result = runner.invoke(args=["orders", "recover"])
    assert result.exit_code == 0, result.output
    assert result.output == "settled 0, refunded 1, failed 0, skipped 0\n"
    money = ledger(app_config)
    assert [e["type"] for e in money] == ["charge", "refund"]  # nothing moved again
    [failed] = rows(app, select(Order))
    assert (failed.status, failed.failure_code, failed.refund_id) == (
        "failed",
        "settlement_failed",
        money[1]["refund_id"],
    )
    assert actions(app)[-2:] == ["ORDER_RECOVERY", "ORDER_REFUNDED"]
    assert rows(app, select(Subscription)) == []
    replay = assert_problem(order(client, ada, "outage"), 502, "settlement_failed")
    assert replay["refund_id"] == money[1]["refund_id"]


def test_orders_are_visible_to_their_owner_and_admins(app, client, runner):
    ada = account(client)
    made = order(client, ada, "k").get_json()
    bob = account(client, "bob@example.com")
    assert client.get(f"/api/v1/orders/{made['order_id']}", headers=ada).get_json() == made
    assert_problem(
        client.get(f"/api/v1/orders/{made['order_id']}", headers=bob), 404, "order_not_found"
    )
    assert_problem(client.post(f"/api/v1/orders/{made['order_id']}/cancel", headers=bob), 404)
    assert client.get("/api/v1/orders", headers=bob).get_json() == {
        "items": [],
        "next_cursor": None,
    }
    assert client.get("/api/v1/orders", headers=ada).get_json()["items"] == [made]
    runner.invoke(
        args=["users", "create-admin", "root@example.com", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    root = account(client, "root@example.com")
    assert client.get(f"/api/v1/orders/{made['order_id']}", headers=root).status_code == 200
    # Support refunds a customer: an admin may cancel someone else's backing order (README).
    cancelled = client.post(f"/api/v1/orders/{made['order_id']}/cancel", headers=root)
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    assert client.get("/api/v1/me/dashboard", headers=ada).get_json()["subscription"] is None


def test_money_is_exact(client):
    ada = account(client)
    body = order(client, ada, "ent", plan="enterprise", seats=9999).get_json()
    assert body["amount_cents"] == 9999 * 2900 == 28_997_100


def test_only_paid_orders_can_be_cancelled(client):
    ada = account(client)
    failed = order(client, ada, "d", token="tok_declined").get_json()
    assert_problem(
        client.post(f"/api/v1/orders/{failed['order_id']}/cancel", headers=ada),
        409,
        "order_not_cancellable",
    )


def test_the_dashboard(client):
    ada = account(client)
    order(client, ada, "k", seats=5)
    client.post("/api/v1/licenses/activate", json={"client_id": "box"}, headers=ada)
    board = client.get("/api/v1/me/dashboard", headers=ada).get_json()
    assert board["user"]["email"] == "ada@example.com"
    assert board["subscription"]["seats"] == 5
    assert board["seats"] == {"limit": 5, "used": 1}
    assert [lic["client_id"] for lic in board["licenses"]] == ["box"]
    assert [o["amount_cents"] for o in board["recent_orders"]] == [4500]


def test_the_dashboard_shows_licenses_subscriptions_and_orders_in_their_one_shape(client):
    # One shape per thing: what the dashboard lists is what the thing's own route answers.
    ada = account(client)
    placed = order(client, ada, "k", seats=2).get_json()
    client.post("/api/v1/licenses/activate", json={"client_id": "box"}, headers=ada)
    board = client.get("/api/v1/me/dashboard", headers=ada).get_json()
    me = client.get("/api/v1/auth/me", headers=ada).get_json()
    assert board["licenses"] == client.get("/api/v1/licenses", headers=ada).get_json()["items"]
    assert board["subscription"] == me["subscription"]
    assert board["user"] == {k: me[k] for k in ("user_id", "email", "plan", "role", "created_at")}
    assert board["recent_orders"] == [
        client.get(f"/api/v1/orders/{placed['order_id']}", headers=ada).get_json()
    ]


# --- renewals ------------------------------------------------------------------------


def _due_now(app):
    operator(app, update(Subscription).values(renews_at=utcnow() - timedelta(minutes=1)))


def test_a_renewal_run_cut_by_an_outage_says_what_it_did(
    app, app_config, client, runner, monkeypatch
):
    """(outside test: a run whose connection was cut printed only "cannot connect", though it
    had renewed and charged) What the run did before the database went away, then one line
    naming the cause; the subscription it was settling is renewed by the next run, charged once."""
    from sqlalchemy.exc import OperationalError

    from app.orders import renewals

    settle = renewals.settle_renewal
    calls = []

    def cut_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OperationalError(
                "SELECT 1", None, ConnectionError("server closed the connection")
            )
        return settle(*args, **kwargs)

    for n in (1, 2):
        order(client, account(client, f"buyer{n}@example.com"), f"k{n}")
    _due_now(app)
    monkeypatch.setattr(renewals, "settle_renewal", cut_on_the_second)
    result = runner.invoke(args=["subscriptions", "renew"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("renewed 1, failed 0, skipped 0"), lines
    assert lines[-1].startswith("error: ") and "renewal stopped" in lines[-1], lines
    assert len(lines) == 2, lines

    monkeypatch.undo()
    operator(app, update(Order).values(updated_at=utcnow() - timedelta(hours=1)))  # lease over
    again = runner.invoke(args=["subscriptions", "renew"])
    assert again.exit_code == 0 and "renewed 1," in again.output, again.output
    renewals_ = rows(app, select(Order).where(Order.kind == "renewal"))
    assert sorted(o.status for o in renewals_) == ["paid", "paid"]
    assert [e["type"] for e in ledger(app_config)] == ["charge"] * 4  # 2 purchases, 2 renewals


def test_renewal_charges_once_and_extends(app, app_config, client, runner):
    ada = account(client)
    order(client, ada, "k", seats=2)
    client.post("/api/v1/licenses/activate", json={"client_id": "box"}, headers=ada)
    _due_now(app)
    [before] = rows(app, select(Subscription))
    result = runner.invoke(args=["subscriptions", "renew"])
    assert result.exit_code == 0, result.output
    assert "renewed 1, failed 0, skipped 0, lapsed 0; charged 18.00 EUR" in result.output
    [after] = rows(app, select(Subscription))
    assert after.renews_at == before.renews_at + timedelta(days=30)
    [lic] = rows(app, select(License))
    assert lic.expires_at == after.renews_at
    again = runner.invoke(args=["subscriptions", "renew"])
    assert "renewed 0" in again.output
    assert [(e["type"], e["amount_cents"]) for e in ledger(app_config)] == [
        ("charge", 1800),
        ("charge", 1800),
    ]
    renewals = rows(app, select(Order).where(Order.kind == "renewal"))
    assert [(o.status, o.amount_cents) for o in renewals] == [("paid", 1800)]


def test_renewal_runs_ahead_so_licenses_never_lapse_between_cron_runs(app, client, runner):
    """An hourly cron left up to an hour where a paying customer's licenses were EXPIRED
    (outside test): a subscription due within RENEWAL_LEAD_HOURS (2) is renewed already,
    from its renewal date, and its licenses with it."""
    ada = account(client)
    order(client, ada, "k", seats=2)
    token = client.post(
        "/api/v1/licenses/activate", json={"client_id": "box"}, headers=ada
    ).get_json()["token"]
    soon = utcnow() + timedelta(minutes=30)
    operator(app, update(Subscription).values(renews_at=soon))
    operator(app, update(License).values(expires_at=soon))
    result = runner.invoke(args=["subscriptions", "renew"])
    assert "renewed 1," in result.output, result.output
    [after] = rows(app, select(Subscription))
    assert after.renews_at == soon + timedelta(days=30)
    [lic] = rows(app, select(License))
    assert lic.expires_at == after.renews_at
    answer = client.post("/api/v1/licenses/validate", json={"token": token}).get_json()
    assert answer["code"] == "VALID" and answer["token"]  # a token with the new expiry


def test_a_subscription_whose_plan_left_the_catalog_fails_the_run(app, app_config, client):
    """A renewal that cannot be charged because its plan is gone is not a quiet "skipped"
    with exit 0 (cron would mail nobody): the run exits 1 and names the subscription."""
    ada = account(client)
    order(client, ada, "k", plan="enterprise", seats=10)
    _due_now(app)
    plans = [
        {"plan": "free", "seats": 1, "max_seats": 1, "price_cents": 0, "currency": "EUR",
         "period_days": 30},
        {"plan": "pro", "seats": 1, "max_seats": 50, "price_cents": 900, "currency": "EUR",
         "period_days": 30},
    ]  # fmt: skip
    without = create_app({**app_config, "PLANS_JSON": json.dumps(plans)})
    try:
        result = without.test_cli_runner().invoke(args=["subscriptions", "renew"])
    finally:
        without.extensions["db"].dispose()
    assert result.exit_code == 1, result.output
    assert "not in the plan catalog" in result.output and "enterprise" in result.output


def test_a_declined_renewal_goes_past_due_then_lapses(app, app_config, client, runner):
    ada = account(client)
    order(client, ada, "k", seats=2)
    client.post("/api/v1/licenses/activate", json={"client_id": "box"}, headers=ada)
    operator(app, update(Order).values(payment_method="tok_declined"))  # the card stopped working
    _due_now(app)
    result = runner.invoke(args=["subscriptions", "renew"])
    assert "renewed 0, failed 1" in result.output
    [sub] = rows(app, select(Subscription))
    assert sub.status == "past_due"
    assert (
        client.get("/api/v1/auth/me", headers=ada).get_json()["seats"]["limit"] == 2
    )  # grace: seats kept
    assert [lic.status for lic in rows(app, select(License))] == ["active"]

    operator(
        app, update(Subscription).values(renews_at=utcnow() - timedelta(days=8))
    )  # grace is 7 days
    result = runner.invoke(args=["subscriptions", "renew"])
    assert "lapsed 1" in result.output
    assert [lic.status for lic in rows(app, select(License))] == ["suspended"]
    me = client.get("/api/v1/auth/me", headers=ada).get_json()
    assert me["plan"] == "free" and me["subscription"] is None
    assert [e["type"] for e in ledger(app_config)] == ["charge"]  # only the original purchase
    assert {"RENEWAL_FAILED", "SUBSCRIPTION_PAST_DUE", "SUBSCRIPTION_LAPSED"} <= set(actions(app))
    assert [u.plan for u in rows(app, select(User))] == ["free"]


@pytest.mark.parametrize("state", ["period over, not renewed yet", "past due"])
def test_an_order_whose_period_is_over_is_not_refunded(app, app_config, client, state):
    """Cancel refunds the purchase that is in force; a period already used up (its renewal
    due or declined) is not refunded (found by the outside test: a full refund after 29
    days and 23 hours, and after a declined renewal)."""
    ada = account(client)
    paid = order(client, ada, "k-used").get_json()
    with app.app_context(), acting_as(OPERATOR):
        session = get_session()
        with transaction(session):
            session.execute(
                update(Subscription).values(
                    renews_at=utcnow() - timedelta(minutes=5),
                    status="past_due" if state == "past due" else "active",
                )
            )
    assert_problem(
        client.post(f"/api/v1/orders/{paid['order_id']}/cancel", headers=ada),
        409,
        "order_not_cancellable",
    )
    assert [e["type"] for e in ledger(app_config)] == ["charge"]
    assert [o.status for o in rows(app, select(Order))] == ["paid"]


def test_a_purchase_while_past_due_brings_the_licenses_back(app, client):
    """Licenses that ran to the end of the paid period (the renewal declined) are extended
    by the next purchase, as a renewal would (outside test: they stayed EXPIRED)."""
    ada = account(client)
    order(client, ada, "k-first", seats=3)
    tokens = [
        client.post(
            "/api/v1/licenses/activate", json={"client_id": f"box-{i}"}, headers=ada
        ).get_json()["token"]
        for i in range(2)
    ]
    ended = utcnow() - timedelta(hours=1)
    with app.app_context(), acting_as(OPERATOR):
        session = get_session()
        with transaction(session):
            session.execute(update(Subscription).values(renews_at=ended, status="past_due"))
            session.execute(update(License).values(expires_at=ended))
    codes = [
        client.post("/api/v1/licenses/validate", json={"token": t}).get_json()["code"]
        for t in tokens
    ]
    assert codes == ["EXPIRED", "EXPIRED"]
    assert order(client, ada, "k-again", seats=3).status_code == 201
    codes = [
        client.post("/api/v1/licenses/validate", json={"token": t}).get_json()["code"]
        for t in tokens
    ]
    assert codes == ["VALID", "VALID"]
    assert client.get("/api/v1/auth/me", headers=ada).get_json()["seats"] == {"limit": 3, "used": 2}


def test_no_license_is_born_expired_while_past_due(app, client):
    """A subscription whose period ended (renewal declined, past due) gives no new license
    that would be expired at birth (second outside test): 409 subscription_past_due, until
    a purchase brings the period back."""
    ada = account(client)
    order(client, ada, "k-first", seats=3)
    ended = utcnow() - timedelta(minutes=10)
    operator(app, update(Subscription).values(renews_at=ended, status="past_due"))
    refused = client.post("/api/v1/licenses/activate", json={"client_id": "late"}, headers=ada)
    assert_problem(refused, 409, "subscription_past_due")
    assert rows(app, select(License)) == []
    assert order(client, ada, "k-again", seats=3).status_code == 201
    again = client.post("/api/v1/licenses/activate", json={"client_id": "late"}, headers=ada)
    assert again.status_code == 201, again.get_json()


def test_cancel_answers_alike_whether_or_not_the_renewal_ran(app, app_config, client):
    """Within RENEWAL_LEAD_HOURS of its renewal date an order is no longer refunded, as if
    the renewal had already run (second outside test: 200 and a full refund an hour before
    the date when the job had not run yet, 409 when it had)."""
    ada = account(client)
    paid = order(client, ada, "k-lead").get_json()
    operator(app, update(Subscription).values(renews_at=utcnow() + timedelta(minutes=60)))
    assert_problem(
        client.post(f"/api/v1/orders/{paid['order_id']}/cancel", headers=ada),
        409,
        "order_not_cancellable",
    )
    assert [e["type"] for e in ledger(app_config)] == ["charge"]


def test_orders_come_in_keyset_pages(client):
    ada = account(client)
    for i in range(5):
        assert order(client, ada, f"k-page-{i}", seats=i + 1).status_code == 201
    seen, cursor = [], None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/api/v1/orders{query}", headers=ada).get_json()
        seen += [o["order_id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)  # newest first, each once
    assert_problem(
        client.get("/api/v1/orders?cursor=WyJ4IiwgInkiXQ", headers=ada), 422, "invalid_cursor"
    )  # ["x", "y"]: a cursor of another list's shape


def test_an_attempt_that_outlived_its_lease_does_not_settle_the_order_again(
    app, app_config, client
):
    """A first attempt slow enough for its lease to end reaches its settlement after a retry
    (or `flask orders recover`) took the order over and settled it: it must answer what the
    key recorded, not grant the subscription a second time for one charge."""
    from app.orders import workflows
    from app.orders.payments import gateway_of
    from app.orders.plans import catalog_of

    ada = account(client)
    paid = order(client, ada, "slow")
    assert paid.status_code == 201
    [before] = rows(app, select(Subscription))
    with app.app_context(), acting_as("orders"):
        session = get_session()
        late = session.get(Order, paid.get_json()["order_id"])
        answer = workflows._pay(session, gateway_of(app), late, catalog_of(app)["pro"])
    assert answer == (201, paid.get_json())
    [after] = rows(app, select(Subscription))
    assert (after.renews_at, after.version) == (before.renews_at, before.version)
    assert [e["type"] for e in ledger(app_config)] == ["charge"]
    assert actions(app).count("ORDER_PAID") == 1


def test_a_recovered_order_never_replaces_a_later_purchase(
    app, app_config, client, runner, monkeypatch
):
    """A purchase cut off after its charge (503) is recovered only after the customer bought
    again with a new key: it is refunded, and what they bought since stays theirs."""
    from sqlalchemy.exc import OperationalError

    from app.orders import service, workflows

    def outage(*args, **kwargs):
        raise OperationalError("SELECT 1", None, ConnectionError("server closed the connection"))

    ada = account(client)
    monkeypatch.setattr(service.auth_api, "grant_subscription", outage)
    monkeypatch.setattr(workflows, "_compensate", lambda *args, **kwargs: None)
    assert_problem(order(client, ada, "cut", plan="enterprise", seats=5), 503)
    monkeypatch.undo()
    again = order(client, ada, "again", plan="pro", seats=5)
    assert again.status_code == 201

    operator(app, update(IdempotencyKey).values(locked_until=utcnow() - timedelta(seconds=1)))
    result = runner.invoke(args=["orders", "recover"])
    assert result.output == "settled 0, refunded 1, failed 0, skipped 0\n", result.output
    [sub] = rows(app, select(Subscription))
    assert (sub.plan, sub.seats) == ("pro", 5)
    money = ledger(app_config)
    assert [e["type"] for e in money] == ["charge", "charge", "refund"]
    assert money[2]["charge_id"] == money[0]["charge_id"]  # the cut-off order's charge
    cancelled = client.post(f"/api/v1/orders/{again.get_json()['order_id']}/cancel", headers=ada)
    assert cancelled.status_code == 200  # the purchase made since still backs the subscription


def test_a_charged_order_whose_plan_left_the_catalog_is_refunded_by_recovery(
    app, app_config, client, runner, monkeypatch
):
    """Nothing can be granted for a plan the catalog no longer has: recovery refunds the
    charge at once (it used to leave the order pending, and audit a recovery, every run)."""
    from sqlalchemy.exc import OperationalError

    from app.orders import service, workflows

    def outage(*args, **kwargs):
        raise OperationalError("SELECT 1", None, ConnectionError("server closed the connection"))

    ada = account(client)
    monkeypatch.setattr(service.auth_api, "grant_subscription", outage)
    monkeypatch.setattr(workflows, "_compensate", lambda *args, **kwargs: None)
    assert_problem(order(client, ada, "gone"), 503)
    monkeypatch.undo()
    monkeypatch.delitem(app.extensions["plans"], "pro")

    operator(app, update(IdempotencyKey).values(locked_until=utcnow() - timedelta(seconds=1)))
    result = runner.invoke(args=["orders", "recover"])
    assert result.exit_code == 0, result.output
    assert result.output == "settled 0, refunded 1, failed 0, skipped 0\n"
    money = ledger(app_config)
    assert [e["type"] for e in money] == ["charge", "refund"]
    [failed] = rows(app, select(Order))
    assert (failed.status, failed.failure_code) == ("failed", "settlement_failed")
    assert rows(app, select(Subscription)) == []
    assert runner.invoke(args=["orders", "recover"]).output.startswith("settled 0, refunded 0")
    assert actions(app).count("ORDER_RECOVERY") == 1


def test_a_replay_repeats_the_recorded_answer_and_get_says_what_the_order_is_now(
    app, app_config, client
):
    """(outside test: a same-key replay answered `paid` for an order cancelled since) As with
    Stripe's idempotency, a replay is the answer to that request, repeated: it tells a client
    whose connection dropped what its purchase did, and never moves money. What the order is
    now is at GET /orders/{id}."""
    ada = account(client)
    paid = order(client, ada, "replayed")
    assert paid.status_code == 201
    order_id = paid.get_json()["order_id"]
    cancelled = client.post(f"/api/v1/orders/{order_id}/cancel", headers=ada)
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"

    replay = order(client, ada, "replayed")
    assert (replay.status_code, replay.get_json()) == (201, paid.get_json())
    assert replay.get_json()["status"] == "paid"
    now = client.get(f"/api/v1/orders/{order_id}", headers=ada)
    assert now.status_code == 200 and now.get_json()["status"] == "cancelled"
    assert [e["type"] for e in ledger(app_config)] == ["charge", "refund"]  # no new charge


def test_a_503_before_the_claim_carries_no_order_and_a_same_key_retry_buys(
    app, app_config, client, monkeypatch
):
    """The database gone before the Idempotency-Key was claimed: 503 without an order_id,
    nothing recorded or charged; a retry with the same key is the purchase (201)."""
    from sqlalchemy.exc import OperationalError

    from app.orders import service

    def outage(*args, **kwargs):
        raise OperationalError("BEGIN", None, ConnectionError("server closed the connection"))

    ada = account(client)
    monkeypatch.setattr(service, "claim", outage)
    body = assert_problem(order(client, ada, "early"), 503, "database_unavailable")
    assert "order_id" not in body
    monkeypatch.undo()
    assert rows(app, select(Order)) == [] and ledger(app_config) == []
    retry = order(client, ada, "early")
    assert retry.status_code == 201 and retry.get_json()["status"] == "paid"
    assert [e["type"] for e in ledger(app_config)] == ["charge"]


def test_a_503_after_the_claim_holds_the_key_until_its_lease_ends(
    app, app_config, client, monkeypatch
):
    """The database gone between the charge and the settlement: 503 without an order_id
    (the order stays pending); a same-key retry within the lease is 409
    idempotency_in_progress, one after it settles the order with the same charge."""
    from sqlalchemy.exc import OperationalError

    from app.orders import routes, service, workflows

    def outage(*args, **kwargs):
        raise OperationalError("SELECT 1", None, ConnectionError("server closed the connection"))

    ada = account(client)
    monkeypatch.setattr(service.auth_api, "grant_subscription", outage)
    monkeypatch.setattr(workflows, "_compensate", lambda *args, **kwargs: None)
    body = assert_problem(order(client, ada, "cut"), 503, "database_unavailable")
    assert "order_id" not in body
    monkeypatch.undo()
    # The retry waits this long for an attempt it finds running before it answers 409.
    monkeypatch.setattr(
        routes,
        "settings",
        lambda: workflows.Settings(lease=timedelta(seconds=60), wait_for_other_attempt=0),
    )
    within = order(client, ada, "cut")
    assert_problem(within, 409, "idempotency_in_progress")
    assert within.headers["Retry-After"] == "1"
    [pending] = rows(app, select(Order))
    assert pending.status == "pending"

    operator(app, update(IdempotencyKey).values(locked_until=utcnow() - timedelta(seconds=1)))
    after = order(client, ada, "cut")
    assert after.status_code == 201 and after.get_json()["order_id"] == pending.order_id
    assert [e["type"] for e in ledger(app_config)] == ["charge"]  # the same charge, settled


def test_settling_leaves_no_stale_copy_of_the_order_in_the_session(app, client):
    """The settlement writes the order with a statement, not through the ORM: an order the
    session had loaded (as recovery's take-over does) must show what it wrote, and stay
    clean."""
    from app.orders import service
    from app.orders.payments import Charge
    from app.orders.plans import catalog_of

    who = account(client)
    user_id = client.get("/api/v1/auth/me", headers=who).get_json()["user_id"]
    fields = ("status", "charge_id", "subscription_id", "version", "settled_at", "updated_at")
    with app.app_context(), acting_as("orders"):
        s, plan = get_session(), catalog_of(app)["pro"]
        with transaction(s):
            claim = service.claim(
                s, user_id, "k1", service.OrderRequest("pro", 3, "tok_ok"), plan, lease=timedelta(1)
            )
        with transaction(s):  # loaded, and kept after the commit (as recovery's take-over)
            loaded = s.get(Order, claim.order.order_id)
            assert loaded.status == "pending"
        with transaction(s):
            body = service.fulfil(s, loaded.order_id, Charge("ch_1", 2700, "EUR"), plan)
        assert not s.dirty
        seen = {name: getattr(loaded, name) for name in fields}
    (stored,) = rows(app, select(Order))
    assert seen == {name: getattr(stored, name) for name in fields}
    assert (seen["status"], seen["version"], seen["charge_id"]) == ("paid", 2, "ch_1")
    assert seen["subscription_id"] == body["subscription_id"] is not None


def test_the_check_for_a_later_settled_order_is_a_range_of_its_index(app, client):
    """Settling an order first asks whether one of the customer's orders created after it
    has settled (`service._overtaken`). Its partial index answers with the first entry of a
    range; the user's (user_id, order_id) index made it read every order of the customer, a
    cost that grew with each renewal or purchase (issue 17). The plan is the database's
    own, for the statement and parameters the check sends."""
    from sqlalchemy import event

    from app.orders import service

    ada = account(client)
    assert order(client, ada, "first").status_code == 201
    assert order(client, ada, "second").status_code == 201

    def check_and_plan(session):
        first = session.scalars(select(Order).order_by(Order.created_at).limit(1)).one()
        connection = session.connection()
        sent = []

        def record(conn, cursor, statement, parameters, context, executemany):
            sent.append((statement, parameters))

        event.listen(connection, "before_cursor_execute", record)
        try:
            overtaken = service._overtaken(session, first)
        finally:
            event.remove(connection, "before_cursor_execute", record)
        [(statement, parameters)] = sent
        if connection.dialect.name == "postgresql":
            # Two orders: ask "which index serves it?", not "is a scan cheaper for two rows?".
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            explain = "EXPLAIN "
        else:
            explain = "EXPLAIN QUERY PLAN "
        cursor = connection.connection.dbapi_connection.cursor()
        cursor.execute(explain + statement, parameters)
        return overtaken, "\n".join(row[-1] for row in cursor.fetchall())

    overtaken, plan = as_operator(app, check_and_plan)
    assert overtaken  # the second order settled after the first was created
    assert "ix_orders_user_id_created_at_settled" in plan, plan
