"""Webhooks (issue 19): events posted to vendors' endpoints, signed per Standard Webhooks,
at least once, retried, SSRF-checked — with a real receiving HTTP server on loopback, on
SQLite and PostgreSQL (docs/events.md, ADR 0013)."""

from __future__ import annotations

import json
import signal
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from standardwebhooks import Webhook

from app.admin.models import AuditLog
from app.kernel import events
from app.kernel.db import get_database, get_session, transaction, utcnow
from app.kernel.ownership import OPERATOR, acting_as
from app.orders.api import OrderPaid
from app.webhooks.delivery import SCHEDULE, Deliverer, post
from app.webhooks.models import WebhookDelivery, WebhookEndpoint
from tests.helpers import assert_problem, project_env, run_flask, sql_sent

PASSWORD = "correct horse battery"
API = "/api/v1/admin/webhooks"


class Receiver:
    """A real HTTP server on loopback that answers from a script of statuses (then 200)
    and keeps every request it received."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append((dict(self.headers), body))
                status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self, secret: str) -> list[dict]:
        """Every request's envelope, each signature verified with the endpoint's secret."""
        return [Webhook(secret).verify(body, headers) for headers, body in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def app_config(app_config):
    app_config["WEBHOOKS_ALLOW_PRIVATE"] = True  # the receiver is on loopback
    app_config["WEBHOOKS_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
    return app_config


def login(client, email: str) -> dict:
    pair = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    return {"Authorization": f"Bearer {pair.get_json()['access_token']}"}


@pytest.fixture
def admin(client, runner) -> dict:
    result = runner.invoke(
        args=["users", "create-admin", "root@example.com", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    return login(client, "root@example.com")


@pytest.fixture
def ada(client) -> dict:
    client.post("/api/v1/auth/register", json={"email": "ada@example.com", "password": PASSWORD})
    return login(client, "ada@example.com")


def subscribe(client, admin, url: str, *types: str) -> dict:
    created = client.post(API, json={"url": url, "events": list(types)}, headers=admin)
    assert created.status_code == 201, created.get_json()
    return created.get_json()


def buy(client, who, key="k1") -> dict:
    answer = client.post(
        "/api/v1/orders",
        json={"plan": "pro", "payment_token": "tok_ok"},
        headers={**who, "Idempotency-Key": key},
    )
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


class Clock:
    """The worker's idea of now, moved on explicitly (no waiting in tests)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def worker(app, clock=None, name="w1", **options) -> Deliverer:
    with app.app_context():
        sessions = get_database().sessions_for("webhooks")
    return Deliverer(
        sessions, app.config, name=name, clock=clock or Clock(), jitter=lambda: 1.0, **options
    )


def deliveries(app) -> list[WebhookDelivery]:
    with app.app_context(), acting_as(OPERATOR):
        return list(get_session().scalars(select(WebhookDelivery)))


def audit_actions(app) -> list[str]:
    with app.app_context(), acting_as(OPERATOR):
        return list(get_session().scalars(select(AuditLog.action).order_by(AuditLog.timestamp)))


def test_a_paid_order_reaches_its_subscriber_signed(app, client, admin, ada, receiver):
    endpoint = subscribe(client, admin, receiver.url, "order.paid")
    assert endpoint["secret"].startswith("whsec_") and endpoint["enabled"] is True
    shown = client.get(f"{API}/{endpoint['webhook_id']}", headers=admin).get_json()
    assert "secret" not in shown  # shown once
    other = subscribe(client, admin, receiver.url.replace("/hooks", "/refunds"), "order.refunded")

    placed = buy(client, ada)
    assert worker(app).run_once() == 1  # only the order.paid subscriber gets one

    [envelope] = receiver.events(endpoint["secret"])  # verified with the official library
    headers, _ = receiver.requests[0]
    assert headers["webhook-id"] == envelope["id"]
    assert envelope["type"] == "order.paid" and envelope["version"] == 1
    assert envelope["aggregate"]["type"] == "order"
    assert envelope["aggregate"]["id"] == placed["order_id"]
    assert envelope["payload"]["amount_cents"] == placed["amount_cents"]
    assert set(envelope) == {"id", "type", "version", "occurred_at", "aggregate", "payload"}
    # The whsec_ secret's base64 part is the key: another endpoint's secret does not verify.
    with pytest.raises(Exception, match="signature"):
        receiver.events(other["secret"])
    assert "WEBHOOK_CREATED" in audit_actions(app)


def test_down_then_500_then_200_is_received_once_by_id(app, client, admin, ada):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there: the receiver is down
    url = f"http://127.0.0.1:{port}/hooks"
    endpoint = subscribe(client, admin, url, "order.paid")
    buy(client, ada)
    clock = Clock()
    deliverer = worker(app, clock)

    assert deliverer.run_once() == 1
    [down] = deliveries(app)
    assert (down.status, down.attempts, down.last_status_code) == ("pending", 1, None)
    assert down.last_error and down.next_attempt_at == clock.now + timedelta(seconds=5)
    assert deliverer.run_once() == 0  # not due yet

    receiver = Receiver(port)
    try:
        receiver.script = [(500, {})]
        clock.advance(seconds=5)
        assert deliverer.run_once() == 1  # 500: retried after 5 minutes
        clock.advance(minutes=5)
        assert deliverer.run_once() == 1  # 200
        assert deliverer.run_once() == 0
        received = receiver.events(endpoint["secret"])
    finally:
        receiver.close()
    assert len(received) == 2 and len({e["id"] for e in received}) == 1  # one event, by id
    page = client.get(f"{API}/{endpoint['webhook_id']}/deliveries", headers=admin).get_json()
    [item] = page["items"]
    assert (item["status"], item["attempts"], item["last_status_code"]) == ("succeeded", 3, 200)
    assert item["last_latency_ms"] is not None and item["next_attempt_at"] is None


def _paid(order_id: str) -> OrderPaid:
    return OrderPaid(
        order_id=order_id,
        user_id="usr_x",
        kind="purchase",
        plan="pro",
        seats=1,
        amount_cents=900,
        currency="EUR",
        subscription_id="sub_x",
    )


def test_a_rolled_back_change_sends_nothing(app, client, admin, receiver):
    subscribe(client, admin, receiver.url, "order.paid")
    paid = _paid("ord_x")
    with app.app_context():
        session = get_session()
        with pytest.raises(RuntimeError), acting_as("orders"), transaction(session):
            events.publish(session, paid, aggregate_version=2)
            raise RuntimeError("the order could not be settled")
    assert deliveries(app) == []
    assert worker(app).run_once() == 0 and receiver.requests == []


def test_endpoints_changed_in_the_transaction_count_for_its_next_events(
    app, client, admin, receiver
):
    """The endpoints read for one event are remembered for the transaction's next ones, but
    an endpoint the same transaction added, disabled or resubscribed is
    seen by the events after that, and nothing remembered outlives the transaction."""
    first = subscribe(client, admin, receiver.url, "order.paid")
    with app.app_context():
        session = get_session()
        with acting_as("orders"), transaction(session):
            events.publish(session, _paid("ord_1"), aggregate_version=2)
            with acting_as("webhooks"):
                second = WebhookEndpoint(url=receiver.url, events=["order.paid"], secret="x")
                session.add(second)
                session.flush()
            events.publish(session, _paid("ord_2"), aggregate_version=2)
            with acting_as("webhooks"):
                session.get(WebhookEndpoint, first["webhook_id"]).enabled = False
                session.flush()
            events.publish(session, _paid("ord_3"), aggregate_version=2)
            with acting_as("webhooks"):
                second.events = ["order.refunded"]
                session.flush()
            events.publish(session, _paid("ord_4"), aggregate_version=2)
        second_id = second.webhook_id
        with acting_as("webhooks"), transaction(session):
            session.get(WebhookEndpoint, second_id).events = ["order.paid"]
        with acting_as("orders"), transaction(session):
            events.publish(session, _paid("ord_5"), aggregate_version=2)
    got = sorted(
        (d.webhook_id == second_id, json.loads(d.body)["aggregate"]["id"]) for d in deliveries(app)
    )
    assert got == [
        (False, "ord_1"),
        (False, "ord_2"),
        (True, "ord_2"),
        (True, "ord_3"),
        (True, "ord_5"),
    ]


def test_an_endpoint_of_a_rolled_back_savepoint_gets_nothing(app, client, admin, receiver):
    """Endpoints read inside a savepoint are forgotten when it ends: an endpoint it added and
    then lost to its rollback receives none of the transaction's later events."""
    first = subscribe(client, admin, receiver.url, "order.paid")
    with app.app_context():
        session = get_session()
        with acting_as("orders"), transaction(session):
            with pytest.raises(RuntimeError), transaction(session):  # a SAVEPOINT
                with acting_as("webhooks"):
                    session.add(
                        WebhookEndpoint(url=receiver.url, events=["order.paid"], secret="x")
                    )
                    session.flush()
                events.publish(session, _paid("ord_1"), aggregate_version=2)
                raise RuntimeError("the inner step failed")
            events.publish(session, _paid("ord_2"), aggregate_version=2)
    got = [(d.webhook_id, json.loads(d.body)["aggregate"]["id"]) for d in deliveries(app)]
    assert got == [(first["webhook_id"], "ord_2")]


def test_an_order_reads_the_endpoints_once_per_transaction(app, client, admin, ada, receiver):
    """A paid order publishes two events in its settlement: one read of the endpoints."""
    subscribe(client, admin, receiver.url, "order.paid", "subscription.granted")
    with app.app_context():
        engine = get_database().engine
    with sql_sent(engine) as seen:
        buy(client, ada)
    assert sum("FROM" in s and "webhook_endpoints" in s.split("FROM")[1] for s in seen) == 1
    assert sorted(d.event_type for d in deliveries(app)) == ["order.paid", "subscription.granted"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:9/x", "a loopback address"),
        ("http://localhost/x", "a loopback address"),
        ("http://[::1]/x", "a loopback address"),
        ("http://10.1.2.3/x", "a private address"),
        ("http://192.168.0.10/x", "a private address"),
        ("http://169.254.169.254/latest/meta-data", "a link-local"),
        ("http://[::ffff:127.0.0.1]/x", "a loopback address"),
        ("http://100.64.0.1/x", "not a public address"),
        ("http://0.0.0.0/x", "an unspecified address"),
        ("http://255.255.255.255/x", "a broadcast address"),
        # IPv4 written inside IPv6 (outside test: all of these were accepted, 201)
        ("http://[::127.0.0.1]/x", "a loopback address"),  # IPv4-compatible ::/96
        ("http://[::a9fe:a9fe]/x", "a link-local"),
        ("http://[64:ff9b::7f00:1]/x", "a loopback address"),  # NAT64 64:ff9b::/96
        ("http://[64:ff9b::a9fe:a9fe]/x", "a link-local"),
        ("http://[64:ff9b:1::a00:1]/x", "a local-use NAT64 address"),  # 64:ff9b:1::/48
        ("http://[::ffff:0:7f00:1]/x", "a loopback address"),  # IPv4-translated
        ("http://[fec0::1]/x", "a site-local address"),  # deprecated fec0::/10
        ("http://example.com:0/x", "port"),
        ("ftp://example.com/x", "http or https"),
        ("http://user:pw@example.com/x", "user name"),
        ("http:///x", "no host"),
        ("http://no-such-host.invalid/x", "does not resolve"),
    ],
)
def test_refused_urls_are_422_with_a_reason(app, client, admin, url, reason):
    app.config["WEBHOOKS_ALLOW_PRIVATE"] = False
    answer = client.post(API, json={"url": url, "events": ["order.paid"]}, headers=admin)
    body = assert_problem(answer, 422, "webhook_url_refused")
    assert reason in body["detail"]


def test_unknown_event_types_and_bad_bodies_are_422(client, admin, receiver):
    answer = client.post(
        API, json={"url": receiver.url, "events": ["audit.recorded"]}, headers=admin
    )
    assert "audit.recorded" in assert_problem(answer, 422, "unknown_event_type")["detail"]
    assert (
        client.post(API, json={"url": receiver.url, "events": []}, headers=admin).status_code == 422
    )
    assert client.post(API, json={"events": ["order.paid"]}, headers=admin).status_code == 422


def test_the_url_is_checked_again_at_delivery(app, client, admin, ada, receiver):
    """An endpoint whose host now resolves to a refused address (DNS rebinding) gets
    nothing: the attempt fails with the reason."""
    subscribe(client, admin, receiver.url, "order.paid")
    buy(client, ada)
    app.config["WEBHOOKS_ALLOW_PRIVATE"] = False
    assert worker(app).run_once() == 1
    [delivery] = deliveries(app)
    assert delivery.status == "pending" and "loopback" in delivery.last_error
    assert receiver.requests == []


def test_410_disables_the_endpoint_audited(app, client, admin, ada, receiver):
    endpoint = subscribe(client, admin, receiver.url, "order.paid")
    receiver.script = [(410, {})]
    buy(client, ada)
    assert worker(app).run_once() == 1
    [delivery] = deliveries(app)
    assert delivery.status == "failed"
    shown = client.get(f"{API}/{endpoint['webhook_id']}", headers=admin).get_json()
    assert shown["enabled"] is False and "410" in shown["disabled_reason"]
    assert "WEBHOOK_DISABLED" in audit_actions(app)
    buy(client, ada, key="k2")  # no delivery for a disabled endpoint
    assert len(deliveries(app)) == 1


@pytest.mark.parametrize("status", [429, 502, 504])
def test_slow_down_answers_honour_retry_after(app, client, admin, ada, receiver, status):
    subscribe(client, admin, receiver.url, "order.paid")
    receiver.script = [(status, {"Retry-After": "120"})]
    buy(client, ada)
    clock = Clock()
    assert worker(app, clock).run_once() == 1
    [delivery] = deliveries(app)
    assert delivery.status == "pending" and delivery.last_status_code == status
    assert delivery.next_attempt_at == clock.now + timedelta(seconds=120)  # not 5 s


def test_redirects_are_failures_and_attempts_run_out(app, client, admin, ada, receiver):
    subscribe(client, admin, receiver.url, "order.paid")
    receiver.script = [(302, {"Location": "http://169.254.169.254/"})] * 10
    buy(client, ada)
    clock = Clock()
    deliverer = worker(app, clock)
    for wait in (*SCHEDULE[1:], 0):  # the schedule, about three days
        assert deliverer.run_once() == 1
        clock.advance(seconds=wait)
    assert deliverer.run_once() == 0
    [delivery] = deliveries(app)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 10, 302)
    assert len(receiver.requests) == 10  # the redirect was never followed


def test_an_endpoint_failing_for_days_is_disabled(app, client, admin, ada, receiver):
    endpoint = subscribe(client, admin, receiver.url, "order.paid")
    receiver.script = [(500, {})] * 20
    buy(client, ada)
    clock = Clock()
    deliverer = worker(app, clock)
    assert deliverer.run_once() == 1
    clock.advance(days=6)
    buy(client, ada, key="k2")
    deliverer.run_once()
    shown = client.get(f"{API}/{endpoint['webhook_id']}", headers=admin).get_json()
    assert shown["enabled"] is False and "days" in shown["disabled_reason"]


def test_two_workers_never_take_the_same_delivery(app, client, admin, ada, receiver):
    subscribe(client, admin, receiver.url, "order.paid")
    for n in range(3):
        buy(client, ada, key=f"k{n}")
    first, second = worker(app, name="a", batch_size=2), worker(app, name="b", batch_size=2)
    with acting_as("webhooks"):
        taken_a = first._claim()
        taken_b = second._claim()
    assert len(taken_a) == 2 and len(taken_b) == 1 and not set(taken_a) & set(taken_b)


def test_rotation_signs_with_both_secrets_for_a_day(app, client, admin, ada, receiver):
    endpoint = subscribe(client, admin, receiver.url, "order.paid")
    rotated = client.post(f"{API}/{endpoint['webhook_id']}/rotate-secret", headers=admin)
    assert rotated.status_code == 200
    new_secret = rotated.get_json()["secret"]
    assert new_secret != endpoint["secret"]
    buy(client, ada)
    clock = Clock()
    worker(app, clock).run_once()
    assert receiver.events(endpoint["secret"]) == receiver.events(new_secret)
    assert len(receiver.requests[0][0]["webhook-signature"].split(" ")) == 2
    assert "WEBHOOK_SECRET_ROTATED" in audit_actions(app)


def test_the_secret_is_stored_encrypted(app, client, admin, receiver):
    endpoint = subscribe(client, admin, receiver.url, "order.paid")
    with app.app_context(), acting_as(OPERATOR):
        stored = get_session().get(WebhookEndpoint, endpoint["webhook_id"])
        assert endpoint["secret"] not in stored.secret
        assert endpoint["secret"].removeprefix("whsec_") not in stored.secret


def test_manage_test_event_redeliver_and_pages(app, client, admin, ada, receiver):
    endpoint = subscribe(client, admin, receiver.url, "order.paid")
    base = f"{API}/{endpoint['webhook_id']}"
    assert [e["webhook_id"] for e in client.get(API, headers=admin).get_json()["items"]] == [
        endpoint["webhook_id"]
    ]
    test = client.post(f"{base}/test", headers=admin)
    assert test.status_code == 202 and test.get_json()["event_type"] == "webhook.test"
    for n in range(2):
        buy(client, ada, key=f"k{n}")
    assert worker(app).run_once() == 3
    first = client.get(f"{base}/deliveries?limit=2", headers=admin).get_json()
    second = client.get(
        f"{base}/deliveries?limit=2&cursor={first['next_cursor']}", headers=admin
    ).get_json()
    assert second["next_cursor"] is None
    ids = [d["delivery_id"] for d in first["items"] + second["items"]]
    assert len(set(ids)) == 3
    bad = client.get(f"{base}/deliveries?cursor=nope", headers=admin)
    assert_problem(bad, 422, "invalid_cursor")

    again = client.post(f"{base}/deliveries/{ids[0]}/redeliver", headers=admin)
    assert again.status_code == 202 and again.get_json()["status"] == "pending"
    assert worker(app).run_once() == 1 and len(receiver.requests) == 4

    patched = client.patch(base, json={"events": ["order.refunded"]}, headers=admin)
    assert patched.status_code == 200 and patched.get_json()["events"] == ["order.refunded"]
    buy(client, ada, key="k9")
    assert worker(app).run_once() == 0  # no longer subscribed to order.paid
    assert client.delete(base, headers=admin).status_code == 204
    assert_problem(client.get(base, headers=admin), 404, "webhook_not_found")
    assert deliveries(app) == []
    assert {"WEBHOOK_UPDATED", "WEBHOOK_DELETED"} <= set(audit_actions(app))


def test_only_admins_manage_webhooks(client, ada):
    assert_problem(client.get(API, headers=ada), 403, "admin_required")
    assert_problem(client.get(API), 401)


def test_prune_keeps_what_is_pending(app, client, admin, ada, receiver, runner):
    subscribe(client, admin, receiver.url, "order.paid")
    buy(client, ada)
    buy(client, ada, key="k2")
    worker(app, batch_size=1).run_once()  # one succeeded, one pending
    with app.app_context(), acting_as(OPERATOR):
        session = get_session()
        with transaction(session):
            for delivery in session.scalars(select(WebhookDelivery)):
                delivery.created_at = utcnow() - timedelta(days=40)
    result = runner.invoke(args=["webhooks", "prune", "--older-than", "30d"])
    assert result.exit_code == 0 and "pruned 1" in result.output, result.output
    assert [d.status for d in deliveries(app)] == ["pending"]
    status = runner.invoke(args=["webhooks", "status"])
    assert "pending 1" in status.output


@pytest.mark.slow
def test_a_worker_killed_mid_delivery_loses_nothing(app, app_config, client, admin, ada, receiver):
    endpoint = subscribe(client, admin, receiver.url, "order.paid")
    buy(client, ada)
    env = project_env(
        APP_ENV="testing",
        DATABASE_URL=app_config["DATABASE_URL"],
        WEBHOOKS_ALLOW_PRIVATE="1",
        WEBHOOKS_ENCRYPTION_KEY=app_config["WEBHOOKS_ENCRYPTION_KEY"],
        FAILPOINTS="webhooks.deliver.after_post",
        LOG_LEVEL="WARNING",
    )
    killed = run_flask("webhooks", "deliver", "--once", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(receiver.requests) == 1  # posted, then killed before recording it
    [delivery] = deliveries(app)
    assert delivery.status == "pending" and delivery.lease_until is not None

    clock = Clock()
    assert worker(app, clock).run_once() == 0  # the dead worker's lease still holds
    clock.advance(minutes=2)  # … until it expires
    assert worker(app, clock).run_once() == 1
    received = receiver.events(endpoint["secret"])
    assert len(received) == 2 and received[0]["id"] == received[1]["id"]  # a duplicate by id
    assert [d.status for d in deliveries(app)] == ["succeeded"]


def test_an_envelope_posted_is_json_of_the_outbox_event(app, client, admin, ada, receiver):
    endpoint = subscribe(client, admin, receiver.url, "order.paid")
    buy(client, ada)
    worker(app).run_once()
    [envelope] = receiver.events(endpoint["secret"])
    with app.app_context(), acting_as(OPERATOR):
        from app.kernel.models import OutboxEvent

        row = (
            get_session()
            .scalars(select(OutboxEvent).where(OutboxEvent.event_id == envelope["id"]))
            .one()
        )
        assert json.loads(events.envelope_of(row).to_json()) == envelope


def test_license_and_account_events_reach_their_subscriber(app, client, admin, receiver):
    endpoint = subscribe(
        client,
        admin,
        receiver.url,
        "user.registered",
        "license.created",
        "license.status_changed",
        "license.deactivated",
    )
    client.post("/api/v1/auth/register", json={"email": "ada@example.com", "password": PASSWORD})
    ada = login(client, "ada@example.com")
    license_id = client.post(
        "/api/v1/licenses/activate", json={"client_id": "laptop-1"}, headers=ada
    ).get_json()["license_id"]
    suspended = client.patch(
        f"/api/v1/admin/licenses/{license_id}",
        json={"status": "suspended"},
        headers={**admin, "If-Match": '"1"'},
    )
    assert suspended.status_code == 200, suspended.get_json()
    client.patch(
        f"/api/v1/admin/licenses/{license_id}",
        json={"status": "active"},
        headers={**admin, "If-Match": '"2"'},
    )
    assert client.delete(f"/api/v1/licenses/{license_id}", headers=ada).status_code == 200
    while worker(app).run_once():
        pass

    received = receiver.events(endpoint["secret"])
    by_type = {}
    for envelope in received:
        by_type.setdefault(envelope["type"], []).append(envelope)
    assert by_type["user.registered"][0]["payload"]["email"] == "ada@example.com"
    assert by_type["license.created"][0]["payload"]["client_id"] == "laptop-1"
    changes = sorted(by_type["license.status_changed"], key=lambda e: e["aggregate"]["version"])
    assert [(e["payload"]["old_status"], e["payload"]["new_status"]) for e in changes] == [
        ("active", "suspended"),
        ("suspended", "active"),
    ]
    [gone] = by_type["license.deactivated"]
    versions = [e["aggregate"]["version"] for e in (by_type["license.created"][0], *changes, gone)]
    assert versions == [1, 2, 3, 4]  # receivers order a license's events by it
    assert all(e["aggregate"]["id"] == license_id for e in (*changes, gone))


def test_a_rolled_back_activation_sends_nothing(app, client, admin, ada, receiver):
    from app.auth.licensing import service as licensing

    subscribe(client, admin, receiver.url, "license.created")
    user_id = client.get("/api/v1/auth/me", headers=ada).get_json()["user_id"]
    with app.app_context():
        session = get_session()
        with pytest.raises(RuntimeError), acting_as("auth"), transaction(session):
            licensing.activate(session, user_id, "laptop-9", ip=None)
            raise RuntimeError("the commit never happens")
    assert deliveries(app) == []
    assert worker(app).run_once() == 0 and receiver.requests == []


@pytest.fixture
def phase3_app(app_config, backend, tmp_path, request):
    """The app with admin on a database of its own (phase 3, docs/phases.md)."""
    import shutil

    from app import create_app
    from app.kernel import migrations
    from tests.conftest import create_pg_database, drop_pg_database, pg_url
    from tests.helpers import PG_SCHEMAS

    name = None
    if backend == "sqlite":
        path = tmp_path / "admin.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        admin_url = f"sqlite:///{path}"
    else:
        name = create_pg_database("lic_admin")
        admin_url = pg_url(name)
        migrations.upgrade(admin_url, schemas=PG_SCHEMAS)
    app_config["MODULE_DATABASE_URLS"] = {"admin": admin_url}
    application = create_app(app_config)
    yield application
    application.extensions["db"].dispose()
    if name is not None:
        drop_pg_database(name)


def test_webhooks_work_with_admin_on_its_own_database(phase3_app, receiver):
    """Phase 3: webhooks' tables stay in the main database; its audit entries travel as
    audit.recorded events (never sent to endpoints)."""
    client, runner = phase3_app.test_client(), phase3_app.test_cli_runner()
    result = runner.invoke(
        args=["users", "create-admin", "root@example.com", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    admin = login(client, "root@example.com")
    client.post("/api/v1/auth/register", json={"email": "ada@example.com", "password": PASSWORD})
    ada = login(client, "ada@example.com")
    endpoint = subscribe(client, admin, receiver.url, "order.paid", "user.registered")
    buy(client, ada)
    assert worker(phase3_app).run_once() == 1
    [envelope] = receiver.events(endpoint["secret"])
    assert envelope["type"] == "order.paid"
    with phase3_app.app_context(), acting_as(OPERATOR):
        from app.kernel.models import OutboxEvent

        types = get_session().scalars(select(OutboxEvent.event_type)).all()
    assert "audit.recorded" in types  # WEBHOOK_CREATED and the rest, on their way to admin


def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_timeout():
    """The timeout bounds the whole request, not each read: a receiver that sends one byte of
    its answer at a time, each well within the timeout, still cannot hold a worker longer."""
    from app.webhooks import delivery, urls

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 200:
                if stop.wait(0.05):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    target = urls.Target("http", "127.0.0.1", port, "127.0.0.1", "/hook")
    try:
        attempt = delivery.post(target, {"content-type": "application/json"}, b"{}", 1.0)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert attempt.status_code is None
    assert attempt.error == "timed out"


def test_a_worker_whose_lease_lapsed_does_not_post_what_it_claimed(
    app, client, admin, ada, receiver
):
    # Outside test: a slow receiver let a batch's lease run out; a second worker claimed the
    # same deliveries, and the first went on posting them (14 events, 19 posts).
    subscribe(client, admin, receiver.url, "order.paid")
    buy(client, ada, key="k1")
    buy(client, ada, key="k2")
    clock = Clock()
    second = worker(app, clock, name="b")
    sent_by_first: list[bytes] = []

    def slow_send(target, headers, body, timeout):
        attempt = post(target, headers, body, timeout)
        sent_by_first.append(body)
        if len(sent_by_first) == 1:  # the first answer took longer than the lease
            clock.advance(seconds=61)
            assert second.run_once() == 2  # both leases lapsed: b takes both
        return attempt

    first = worker(app, clock, name="a", send=slow_send)
    first.run_once()
    assert len(sent_by_first) == 1  # a did not post the delivery b had taken
    assert len(receiver.requests) == 3  # a's first, then b's two
    assert {d.status for d in deliveries(app)} == {"succeeded"}
    assert {d.attempts for d in deliveries(app)} == {1}  # a's late result is not recorded


@pytest.mark.parametrize("timeout", [15, 60])
def test_a_lease_shorter_than_two_timeouts_is_refused_at_start(app, runner, timeout):
    app.config["WEBHOOKS_TIMEOUT_SECONDS"] = timeout
    with pytest.raises(ValueError, match="lease"):
        worker(app, lease_seconds=2 * timeout - 1)
    result = runner.invoke(
        args=["webhooks", "deliver", "--once", "--lease-seconds", str(2 * timeout - 1)]
    )
    assert result.exit_code == 2
    assert "--lease-seconds" in result.output and str(2 * timeout) in result.output


def test_a_second_rotation_within_a_day_is_409_and_the_original_still_signs(
    app, client, admin, ada, receiver
):
    # Outside test: rotating twice in a row cut the original secret off at once, though
    # it is promised to sign for 24 hours more.
    endpoint = subscribe(client, admin, receiver.url, "order.paid")
    url = f"{API}/{endpoint['webhook_id']}/rotate-secret"
    new_secret = client.post(url, headers=admin).get_json()["secret"]
    again = client.post(url, headers=admin)
    body = assert_problem(again, 409, "webhook_rotation_in_progress")
    assert "24 hours" in body["detail"]
    buy(client, ada)
    worker(app).run_once()
    assert receiver.events(endpoint["secret"]) == receiver.events(new_secret)
    assert audit_actions(app).count("WEBHOOK_SECRET_ROTATED") == 1
    with app.app_context(), acting_as(OPERATOR):  # the day is over
        session = get_session()
        with transaction(session):
            row = session.get(WebhookEndpoint, endpoint["webhook_id"])
            row.previous_secret_expires_at = utcnow() - timedelta(seconds=1)
    third = client.post(url, headers=admin)
    assert third.status_code == 200 and third.get_json()["secret"] not in (new_secret,)
