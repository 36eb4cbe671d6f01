"""Rate limits (per IP and per account), the client's real address behind proxies."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app import create_app
from app.admin.models import AuditLog
from app.kernel.db import get_session
from app.kernel.ownership import OPERATOR, acting_as
from tests.helpers import assert_problem, login, register, sign_up

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
def limited(app_config):
    app_config.update(
        RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI="memory://",
        RATELIMIT_LOGIN_PER_IP="5/minute",
        RATELIMIT_LOGIN_PER_ACCOUNT="3/minute",
        RATELIMIT_REGISTER_PER_IP="4/minute",
        RATELIMIT_REGISTER_PER_ACCOUNT="2/minute",
        RATELIMIT_REFRESH_PER_IP="100/minute",
        RATELIMIT_REFRESH_PER_ACCOUNT="2/minute",
    )
    return app_config


def _app(config, **extra):
    application = create_app({**config, **extra})
    return application, application.test_client()


def _login(client, email, ip="198.51.100.1", headers=None):
    """A login with the wrong password, from `ip`."""
    return login(client, email, "wrong password!", ip=ip, headers=headers or {})


def _logins_through(client, proxy: str, forwarded: list[str]) -> list:
    """One wrong-password login per X-Forwarded-For value, each for an account of its own,
    all arriving from `proxy`."""
    return [
        _login(client, f"u{i}@example.com", ip=proxy, headers={"X-Forwarded-For": value})
        for i, value in enumerate(forwarded)
    ]


def audited_addresses(application) -> list[str]:
    """The address of every audit entry, oldest first."""
    with application.app_context(), acting_as(OPERATOR):
        entries = get_session().scalars(select(AuditLog).order_by(AuditLog.log_id))
        return [entry.ip_address for entry in entries]


def test_login_is_limited_per_account_and_address(limited):
    application, client = _app(limited)
    for _ in range(3):  # one address guessing one account's password
        assert _login(client, "a@example.com", ip="198.51.100.1").status_code == 401
    response = _login(client, "A@example.com", ip="198.51.100.1")
    body = assert_problem(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) > 0
    assert body["title"] == "Too Many Requests"
    # Another account from the same address is not affected …
    assert _login(client, "b@example.com", ip="198.51.100.1").status_code == 401
    application.extensions["db"].dispose()


def test_one_address_cannot_spend_the_owners_budget(limited):
    """The per-account limit counts per account AND address: an attacker hammering an
    account from one address is refused, the owner logging in from elsewhere is not (the
    account-wide protection against many addresses is the lockout's ceiling, ADR 0008)."""
    application, client = _app(limited)
    register(client, "a@example.com")
    for _ in range(6):
        _login(client, "a@example.com", ip="203.0.113.66")
    assert_problem(_login(client, "a@example.com", ip="203.0.113.66"), 429, "rate_limited")
    owner = login(client, "a@example.com", ip="198.51.100.7")
    assert owner.status_code == 200, owner.get_json()
    application.extensions["db"].dispose()


def test_login_is_limited_per_ip(limited):
    application, client = _app(limited)
    for i in range(5):
        assert _login(client, f"user{i}@example.com").status_code == 401
    assert_problem(_login(client, "other@example.com"), 429, "rate_limited")
    assert _login(client, "other@example.com", ip="198.51.100.2").status_code == 401
    application.extensions["db"].dispose()


def test_register_is_limited_per_ip_and_per_account(limited):
    application, client = _app(limited)
    assert register(client, "a@example.com", ip="192.0.2.1").status_code == 201
    assert register(client, "a@example.com", ip="192.0.2.1").status_code == 409
    assert_problem(
        register(client, "a@example.com", ip="192.0.2.1"), 429, "rate_limited"
    )  # per account
    assert register(client, "a@example.com", ip="192.0.2.3").status_code == 409  # … and address
    for email in ("b@example.com", "c@example.com", "d@example.com"):
        assert register(client, email, ip="192.0.2.3").status_code == 201
    assert_problem(
        register(client, "e@example.com", ip="192.0.2.3"), 429, "rate_limited"
    )  # per address
    application.extensions["db"].dispose()


def test_refresh_is_limited_per_account(limited):
    application, client = _app(limited)
    token = sign_up(client, "a@example.com").refresh
    for _ in range(2):
        response = client.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        token = response.get_json()["refresh_token"]
    response = client.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 429, "rate_limited")
    application.extensions["db"].dispose()


def test_x_forwarded_for_is_ignored_without_trusted_proxies(limited):
    application, client = _app(limited)
    for i in range(5):
        _login(client, f"u{i}@example.com", headers={"X-Forwarded-For": f"203.0.113.{i}"})
    # All five came from one socket address: spoofing X-Forwarded-For does not help.
    assert (
        _login(client, "x@example.com", headers={"X-Forwarded-For": "203.0.113.99"}).status_code
        == 429
    )
    application.extensions["db"].dispose()


def test_trusted_proxy_hop_gives_the_client_address(limited):
    application, client = _app(limited, TRUSTED_PROXIES=1)
    # nginx appends the address it saw; a client-supplied entry further left is not believed.
    forwarded = [f"10.9.9.9, 203.0.113.{i}" for i in range(5)]
    assert [r.status_code for r in _logins_through(client, "127.0.0.1", forwarded)] == [401] * 5
    assert audited_addresses(application) == [f"203.0.113.{i}" for i in range(5)]
    # Different clients behind the same proxy have separate per-IP budgets.
    ok = _login(
        client, "z@example.com", ip="127.0.0.1", headers={"X-Forwarded-For": "203.0.113.50"}
    )
    assert ok.status_code == 401
    application.extensions["db"].dispose()


def test_only_the_trusted_proxy_may_name_the_client(limited):
    """With TRUSTED_PROXIES=1, a peer that reaches gunicorn directly (not the proxy) could
    name any address it liked in X-Forwarded-For, and dodge per-address limits and lockouts
    by rotating it (outside test). Only peers in TRUSTED_PROXY_ADDRESSES are believed."""
    application, client = _app(limited, TRUSTED_PROXIES=1)
    _logins_through(client, "198.51.100.20", [f"6.6.6.{i}" for i in range(5)])
    assert_problem(
        _login(client, "z@example.com", ip="198.51.100.20", headers={"X-Forwarded-For": "6.6.6.9"}),
        429,
        "rate_limited",
    )
    assert set(audited_addresses(application)) == {"198.51.100.20"}
    application.extensions["db"].dispose()


def test_an_ipv4_mapped_proxy_address_is_the_proxy(limited):
    """On a dual-stack bind the local nginx arrives as ::ffff:127.0.0.1: still the trusted
    proxy (second outside test: every client then shared one address, and one attacker
    locked the owner out). Mapped client addresses are their IPv4 form."""
    application, client = _app(limited, TRUSTED_PROXIES=1)
    _logins_through(client, "::ffff:127.0.0.1", [f"::ffff:203.0.113.{i}" for i in range(3)])
    assert sorted(audited_addresses(application)) == ["203.0.113.0", "203.0.113.1", "203.0.113.2"]
    application.extensions["db"].dispose()


def test_a_forwarded_address_with_a_port_is_the_address(limited):
    """(outside test: a proxy that forwards `address:port` made every client "unknown", one
    budget for all) The port is not part of who the client is."""
    application, client = _app(limited, TRUSTED_PROXIES=1)
    forwarded = ["203.0.113.7:51234", "[2001:db8::7]:443", "203.0.113.8"]
    _logins_through(client, "127.0.0.1", forwarded)
    assert audited_addresses(application) == ["203.0.113.7", "2001:db8::7", "203.0.113.8"]
    application.extensions["db"].dispose()


def test_bearer_activations_count_against_the_account(app_config, tmp_path):
    """(an independent review: the per-account limit did not count Bearer activations)"""
    app_config.update(
        RATELIMIT_ENABLED=True,
        RATELIMIT_ACTIVATE_PER_ACCOUNT="2/minute",
        RATELIMIT_ACTIVATE_PER_IP="100/minute",
    )
    app = create_app(app_config)
    client = app.test_client()
    h = sign_up(client).headers
    codes = [
        client.post(
            "/api/v1/licenses/activate",
            json={"client_id": "same"},
            headers=h,
            environ_base={"REMOTE_ADDR": f"10.0.0.{i}"},
        ).status_code
        for i in range(6)
    ]
    app.extensions["db"].dispose()
    assert 429 in codes, codes  # observed [201, 200, 200, 200, 200, 200]
