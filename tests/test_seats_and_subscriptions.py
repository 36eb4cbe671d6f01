"""Seats and subscriptions: what a subscription's grant, change, lapse and cancel do to the
licenses it covers, also when another change races it. (Each of these failed once, before
its fix, in an independent review of licensing.)"""

import threading
from datetime import timedelta

import pytest

from app.auth import api as auth_api
from app.auth.licensing import service as licensing
from app.auth.licensing import subscriptions
from app.auth.models import License, Subscription, User
from app.kernel.db import get_session, transaction, utcnow
from app.kernel.ownership import acting_as
from tests.helpers import audit, grant_subscription, sign_up


def activated_a_year_ago(app, user_id: str, client_id: str = "old-laptop"):
    """A license activated 366 days ago: expired, though its row still says 'active'."""
    year_ago = utcnow() - timedelta(days=366)
    with app.app_context(), acting_as("auth"):
        s = get_session()
        with transaction(s):
            return licensing.activate(s, user_id, client_id, ip=None, now=year_ago)


# Found: an expired-but-'active' license is revived past the seat limit by a subscription
def test_subscription_does_not_revive_licenses_beyond_the_seats(app, client):
    ada = sign_up(client)
    uid, h = ada.user_id, ada.headers
    activated_a_year_ago(app, uid)
    assert (
        client.post(
            "/api/v1/licenses/activate", json={"client_id": "new-laptop"}, headers=h
        ).status_code
        == 201
    )
    grant_subscription(app, uid, 1, plan="team")
    seats = client.get("/api/v1/auth/me", headers=h).get_json()["seats"]
    assert seats["used"] <= seats["limit"], seats  # observed {'limit': 1, 'used': 2}


# Found: re-activating a client whose license expired returns the expired license (200)
def test_reactivating_an_expired_client_gives_a_live_license(app, client):
    ada = sign_up(client)
    uid, h = ada.user_id, ada.headers
    activated_a_year_ago(app, uid)
    r = client.post("/api/v1/licenses/activate", json={"client_id": "old-laptop"}, headers=h)
    tok = r.get_json()["token"]
    v = client.post("/api/v1/licenses/validate", json={"token": tok}).get_json()
    assert v["code"] == "VALID", (r.status_code, v["code"])  # observed (200, 'EXPIRED')


# Found: buying a plan with fewer seats leaves more live licenses than seats
def test_fewer_seats_suspend_the_excess(app, client):
    ada = sign_up(client)
    uid, h = ada.user_id, ada.headers
    grant_subscription(app, uid, 3, plan="team")
    for i in range(3):
        assert (
            client.post(
                "/api/v1/licenses/activate", json={"client_id": f"c{i}"}, headers=h
            ).status_code
            == 201
        )
    grant_subscription(app, uid, 1, plan="team")
    seats = client.get("/api/v1/auth/me", headers=h).get_json()["seats"]
    assert seats["used"] <= seats["limit"], seats  # observed {'limit': 1, 'used': 3}


# Found: lapse_past_due overwrites a renewal that committed between its read and its lock
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_lapse_does_not_overwrite_a_concurrent_renewal(app, client, monkeypatch):
    ada = sign_up(client)
    uid, h = ada.user_id, ada.headers
    sub = grant_subscription(app, uid, 2, plan="team")
    for cid in ("a", "b"):
        client.post("/api/v1/licenses/activate", json={"client_id": cid}, headers=h)
    with app.app_context():
        s = get_session()
        with transaction(s):
            auth_api.mark_subscription_past_due(s, sub.subscription_id, reason="declined")
    real, fired = subscriptions.lock_user, []

    def interleave(session, user_id):
        if not fired:
            fired.append(1)
            th = threading.Thread(target=grant_subscription, args=(app, uid, 2, "team"))
            th.start()
            th.join()
        return real(session, user_id)

    monkeypatch.setattr(subscriptions, "lock_user", interleave)
    with app.app_context():
        s = get_session()
        with transaction(s):
            auth_api.lapse_past_due_subscriptions(
                s, grace=timedelta(0), now=sub.renews_at + timedelta(days=1)
            )
    with app.app_context():
        live = auth_api.live_subscription(get_session(), uid)
    assert live is not None  # observed: None (status 'expired', licenses suspended, plan free)


# Found: cancel_subscription overwrites a concurrent (final) revoke with 'suspended'
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_cancel_does_not_unrevoke_a_concurrently_revoked_license(app, client, monkeypatch):
    ada = sign_up(client)
    uid, h = ada.user_id, ada.headers
    grant_subscription(app, uid, 2, plan="team")
    ids = [
        client.post("/api/v1/licenses/activate", json={"client_id": c}, headers=h).get_json()[
            "license_id"
        ]
        for c in ("a", "b")
    ]

    def owner_deactivates():
        client.delete(f"/api/v1/licenses/{ids[1]}", headers=h)

    real, threads = subscriptions._suspend_excess, []

    def interleave(session, user_id, **kw):
        if not threads:
            # The owner revokes a license while the cancellation is about to suspend it.
            # With row locks the revoke either lands first (and is seen) or waits for our
            # commit; it must never be overwritten.
            threads.append(threading.Thread(target=owner_deactivates))
            threads[0].start()
            threads[0].join(timeout=2)
        return real(session, user_id, **kw)

    monkeypatch.setattr(subscriptions, "_suspend_excess", interleave)
    with app.app_context():
        s = get_session()
        with transaction(s):
            auth_api.cancel_subscription(s, uid)
    threads[0].join(timeout=30)
    with app.app_context():
        assert (
            auth_api.get_license(get_session(), ids[1]).status == "revoked"
        )  # observed 'suspended'


def test_fewer_seats_suspend_the_newest_licenses_each_audited(app, client):
    ada = sign_up(client)
    uid, h = ada.user_id, ada.headers
    grant_subscription(app, uid, 3, plan="team")
    ids = [
        client.post("/api/v1/licenses/activate", json={"client_id": c}, headers=h).get_json()[
            "license_id"
        ]
        for c in ("first", "second", "third")
    ]
    grant_subscription(app, uid, 1, plan="team")
    with app.app_context(), acting_as("auth"):
        statuses = {i: licensing.get_license(get_session(), i).status for i in ids}
    assert statuses == {ids[0]: "active", ids[1]: "suspended", ids[2]: "suspended"}
    changes = [e.details for e in audit(app, "LICENSE_STATUS_CHANGED")]
    assert sorted((c["license_id"], c["reason"], c["new_status"]) for c in changes) == [
        (ids[1], "fewer_seats", "suspended"),
        (ids[2], "fewer_seats", "suspended"),
    ]
    assert audit(app, "SUBSCRIPTION_GRANTED")[-1].details["suspended_licenses"] == 2


def test_a_grant_leaves_no_stale_copy_in_the_session(app, client):
    """The grant writes with statements, not through the ORM: a user or subscription the
    session had loaded before must show what it wrote (and stay clean)."""
    ada = sign_up(client)
    first = grant_subscription(app, ada.user_id, 2, plan="pro")
    with app.app_context():
        s = get_session()
        with acting_as("auth"), transaction(s):  # loaded, and kept after the commit
            user = s.get(User, ada.user_id)
            sub = s.get(Subscription, first.subscription_id)
            assert (user.plan, sub.seats, sub.version) == ("pro", 2, 1)
        with transaction(s):
            granted = auth_api.grant_subscription(
                s, ada.user_id, plan="team", seats=5, period=timedelta(days=30)
            )
        assert not s.dirty
        seen = (user.plan, sub.plan, sub.seats, sub.version, sub.renews_at, sub.updated_at)
        seen_user_updated = user.updated_at
    with app.app_context(), acting_as("auth"):
        s = get_session()
        user, sub = s.get(User, ada.user_id), s.get(Subscription, first.subscription_id)
        stored = (user.plan, sub.plan, sub.seats, sub.version, sub.renews_at, sub.updated_at)
        assert seen == stored == ("team", "team", 5, 2, granted.renews_at, sub.updated_at)
        assert seen_user_updated == user.updated_at


def test_a_grant_and_a_renewal_leave_no_stale_license_in_the_session(app, client):
    """The licenses a grant or a renewal extends are written by one statement: a license
    the session had loaded must show the new expiry and version afterwards."""
    ada = sign_up(client)
    first = grant_subscription(app, ada.user_id, 2, plan="pro")
    lic = client.post(
        "/api/v1/licenses/activate", json={"client_id": "box-1"}, headers=ada.headers
    ).get_json()
    with app.app_context():
        s = get_session()
        with acting_as("auth"), transaction(s):
            license_ = s.get(License, lic["license_id"])
            assert license_.version == 1
        with transaction(s):
            granted = auth_api.grant_subscription(
                s, ada.user_id, plan="team", seats=5, period=timedelta(days=60)
            )
        assert (license_.expires_at, license_.version) == (granted.renews_at, 2)
        with transaction(s):
            renewed = auth_api.renew_subscription(
                s,
                first.subscription_id,
                expected_renews_at=granted.renews_at,
                period=timedelta(days=30),
            )
        assert (license_.expires_at, license_.version) == (renewed.renews_at, 3)
        assert not s.dirty


@pytest.mark.parametrize("value", ["", "active'", "a b", "x;--", "100%", "activé", "\uff41ctive"])
def test_a_status_constant_refuses_anything_but_a_status_name(value):
    """seats.constant writes its value into the SQL itself (not bound): only the code's own
    status names — ASCII letters, digits and underscores — ever get there."""
    from app.auth.licensing.seats import constant

    with pytest.raises(ValueError):
        constant(value)


def test_a_status_constant_is_written_as_a_quoted_literal():
    from app.auth.licensing.seats import constant

    assert str(constant("past_due")) == "'past_due'"
