"""The HTTP layer's work is done where it applies and once (issue 17): the rate limiter is
not consulted on routes without limits (the limits still hold where they apply, in memory
and in Redis), and a Bearer token is verified once per request even when a per-account
limit needs its subject before the view does."""

from __future__ import annotations

import pytest

from app import create_app
from app.http.limits import limiter
from tests.helpers import assert_problem, bearer, limits_storage

API = "/api/v1"
PASSWORD = "correct horse battery"


@pytest.fixture(params=["memory", "redis"])
def storage(request) -> str:
    return limits_storage(request, "lazymemory://")


@pytest.fixture
def consulted(monkeypatch) -> list[str]:
    """The paths of the requests for which the limiter decided whether to limit: it asks
    its request filters (public API) first, every time it does."""
    paths: list[str] = []
    monkeypatch.setattr(limiter, "_request_filters", [])  # this test's filter only

    @limiter.request_filter
    def record() -> bool:
        from flask import request

        paths.append(request.path)
        return False

    return paths


def test_the_limiter_is_consulted_only_on_limited_routes(app_config, storage, consulted):
    app = create_app(
        {
            **app_config,
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": storage,
            "RATELIMIT_VALIDATE_PER_TOKEN": "1000/minute",
            "RATELIMIT_VALIDATE_PER_IP": "2/minute",  # checked first: its headers
        }
    )
    client = app.test_client()
    try:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/nowhere"):
            response = client.get(path)
            assert response.status_code in (200, 404), (path, response.status_code)
            assert "X-RateLimit-Limit" not in response.headers
        assert client.get("/healthz").get_json() == {"status": "ok"}
        assert consulted == []

        body = {"token": "not-a-token", "client_id": "laptop"}
        answers = [client.post(f"{API}/licenses/validate", json=body) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 429]
        assert answers[0].headers["X-RateLimit-Limit"] == "2"
        assert "Retry-After" not in answers[0].headers
        assert_problem(answers[2], 429, "rate_limited")
        assert int(answers[2].headers["Retry-After"]) > 0
        assert set(consulted) == {f"{API}/licenses/validate"}
    finally:
        app.extensions["db"].dispose()


def _account(client) -> dict:
    client.post(f"{API}/auth/register", json={"email": "ada@example.com", "password": PASSWORD})
    return client.post(
        f"{API}/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
    ).get_json()


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The type of each token flask-jwt-extended decoded and verified."""
    import flask_jwt_extended.jwt_manager as manager

    seen: list[str] = []
    decode = manager._decode_jwt

    def counting(*args, **kwargs):
        claims = decode(*args, **kwargs)
        seen.append(claims.get("type", "?"))
        return claims

    monkeypatch.setattr(manager, "_decode_jwt", counting)
    return seen


def test_a_bearer_token_is_verified_once_per_request(app_config, decodes):
    app = create_app(
        {
            **app_config,
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": "lazymemory://",
            "RATELIMIT_ACTIVATE_PER_ACCOUNT": "3/minute",
            "RATELIMIT_ACTIVATE_PER_IP": "1000/minute",
            "RATELIMIT_REFRESH_PER_ACCOUNT": "1000/minute",
        }
    )
    client = app.test_client()
    try:
        pair = _account(client)
        decodes.clear()
        activated = client.post(
            f"{API}/licenses/activate",
            json={"client_id": "laptop-1"},
            headers=bearer(pair["access_token"]),
        )
        assert activated.status_code == 201, activated.get_json()
        assert decodes == ["access"]  # the per-account key and the view: one verification

        decodes.clear()
        refreshed = client.post(f"{API}/auth/refresh", headers=bearer(pair["refresh_token"]))
        assert refreshed.status_code == 200, refreshed.get_json()
        assert decodes == ["refresh"]

        # The per-account limit still counts the account, from any address.
        access = refreshed.get_json()["access_token"]
        codes = [
            client.post(
                f"{API}/licenses/activate",
                json={"client_id": "laptop-1"},
                headers=bearer(access),
                environ_base={"REMOTE_ADDR": f"10.0.0.{i}"},
            ).status_code
            for i in range(4)
        ]
        assert codes == [200, 200, 429, 429]  # the first activation counted too

        # A revoked token is still refused: the view's check is the full one.
        assert client.post(f"{API}/auth/logout", headers=bearer(access)).status_code == 204
        app.config["RATELIMIT_ACTIVATE_PER_ACCOUNT"] = "1000/minute"
        assert_problem(
            client.post(
                f"{API}/licenses/activate", json={"client_id": "laptop-2"}, headers=bearer(access)
            ),
            401,
            "token_revoked",
        )
    finally:
        app.extensions["db"].dispose()


def test_trusted_proxy_decided_per_peer_whatever_came_before(app_config, caplog, monkeypatch):
    """The proxy's trust is remembered per peer address: a direct client after the proxy
    (and the proxy after it) each get their own answer."""
    import logging

    # create_app would replace the root logger's handlers, and with them caplog's.
    monkeypatch.setattr("app.http.observability.configure_logging", lambda *_args: None)
    app = create_app({**app_config, "TRUSTED_PROXIES": 1, "TRUSTED_PROXY_ADDRESSES": "10.9.9.9"})
    client = app.test_client()
    monkey = {"X-Forwarded-For": "198.51.100.7"}
    caplog.set_level(logging.INFO, logger="app.access")
    try:
        for peer in ("10.9.9.9", "203.0.113.5", "10.9.9.9", "::ffff:10.9.9.9", "203.0.113.5"):
            client.get("/healthz", headers=monkey, environ_base={"REMOTE_ADDR": peer})
        ips = [r.fields["ip"] for r in caplog.records if r.name == "app.access"]
        assert ips == ["198.51.100.7", "203.0.113.5", "198.51.100.7", "198.51.100.7", "203.0.113.5"]
    finally:
        app.extensions["db"].dispose()


def test_metric_children_stay_bounded_whatever_the_method(client):
    from app.http import observability

    client.get("/healthz")
    before = len(observability._metric_children)
    for i in range(50):
        client.open("/healthz", method=f"X{i}")
    client.get("/healthz")
    assert len(observability._metric_children) <= before + 2  # ("other", 405) at most
    body = client.get("/metrics").get_data(as_text=True)
    assert 'method="other",route="<unmatched>",status="405"' in body


def test_a_views_retry_after_is_kept_on_routes_without_limits(app_config):
    """A 409 "in progress" answer's Retry-After (orders' IdempotencyInProgress) reaches
    the client; the limiter's own Retry-After is still dropped from non-429 answers."""
    from app.http.problems import problem_response

    app = create_app({**app_config, "RATELIMIT_ENABLED": True})
    app.add_url_rule(
        "/busy",
        "busy",
        lambda: problem_response(409, "in_progress", headers={"Retry-After": "1"}),
    )
    client = app.test_client()
    try:
        busy = client.get("/busy")
        assert busy.status_code == 409 and busy.headers["Retry-After"] == "1"
        limited = client.post(f"{API}/licenses/validate", json={"token": "x", "client_id": "c"})
        assert limited.status_code == 200 and "Retry-After" not in limited.headers
    finally:
        app.extensions["db"].dispose()
