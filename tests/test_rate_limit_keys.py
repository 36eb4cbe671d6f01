"""Rate limits that no request can switch off (issue 14 item 2).

flask-limiter takes an exception from a key function for a storage failure and moves every
later request to fresh in-memory counters. A lone surrogate in a validation token used to
do exactly that, so the limits on login and register started again from zero, with Redis
and without. Here a limit is exhausted, hostile bodies and headers follow (each answered as
usual, without a traceback in the log), and the next request is still 429 — on the
in-memory storage and on Redis.
"""

from __future__ import annotations

import json
import logging

import pytest

from app import create_app
from app.http.limits import limiter, rate_limit_key
from tests.helpers import assert_problem, limits_storage

API = "/api/v1"
PASSWORD = "correct horse battery"


@pytest.fixture
def backend():
    return "sqlite"


@pytest.fixture(params=["memory", "redis"])
def storage(request) -> str:
    return limits_storage(request, "memory://")


@pytest.fixture
def limited(app_config, storage, monkeypatch, caplog):
    # create_app would replace the root logger's handlers, and with them caplog's.
    monkeypatch.setattr("app.http.observability.configure_logging", lambda *_args: None)
    # The limiter is one object per process: start from a healthy storage whatever an
    # earlier test left (the app under test would always start so).
    monkeypatch.setattr(limiter, "_storage_dead", False)
    caplog.set_level(logging.INFO)
    application = create_app(
        {
            **app_config,
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": storage,
            "RATELIMIT_LOGIN_PER_ACCOUNT": "3/minute",
            "RATELIMIT_LOGIN_PER_IP": "1000/minute",
            "RATELIMIT_REGISTER_PER_IP": "1000/minute",
            "RATELIMIT_REGISTER_PER_ACCOUNT": "1000/minute",
            "RATELIMIT_VALIDATE_PER_TOKEN": "2/minute",
            "RATELIMIT_VALIDATE_PER_IP": "1000/minute",
            "RATELIMIT_ACTIVATE_PER_ACCOUNT": "1000/minute",
            "RATELIMIT_ACTIVATE_PER_IP": "1000/minute",
            "RATELIMIT_REFRESH_PER_ACCOUNT": "1000/minute",
            "RATELIMIT_REFRESH_PER_IP": "1000/minute",
        }
    )
    yield application
    application.extensions["db"].dispose()


def deep(n: int) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


def body(**members: object) -> bytes:
    """A JSON object as a client would send it (lone surrogates escaped as \\udXXX)."""
    return json.dumps(members).encode()


def typed(content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


VICTIM = body(email="victim@example.com", password="x")
ODD_XFF = {"X-Forwarded-For": "\xff, ::::, 1.2.3.4.5"}
UTF16 = json.dumps({"email": "v@x.io", "password": "x"}).encode("utf-16")

# (label, path, body bytes, headers, statuses that are the route's normal answer)
HOSTILE = [
    ("lone surrogate token", "validate", body(token="\ud800"), {}, {200, 422}),
    ("lone low surrogate token", "validate", body(token="a\udfffb"), {}, {200, 422}),
    ("lone surrogate email", "login", body(email="\ud800@x.io", password="x"), {}, {422}),
    ("surrogate email register", "register", body(email="\udfff", password="p"), {}, {422}),
    (
        "surrogate activate",
        "activate",
        body(client_id="c", email="\ud800", password="x"),
        {},
        {422},
    ),
    ("invalid UTF-8", "login", b'{"email": "\xed\xa0\x80@x.io", "password": "x"}', {}, {400}),
    ("invalid UTF-8 token", "validate", b'{"token": "\xff\xfe"}', {}, {400}),
    ("array body", "validate", b"[1, 2]", {}, {422}),
    ("string body", "login", b'"victim@example.com"', {}, {422}),
    ("number body", "register", b"1e999", {}, {422}),
    ("null body", "validate", b"null", {}, {422}),
    ("email not a string", "login", body(email=["victim@example.com"], password="x"), {}, {422}),
    ("token not a string", "validate", b'{"token": {"a": 1}}', {}, {422}),
    ("deep JSON", "validate", deep(50_000), {}, {400}),
    ("deep JSON login", "login", deep(50_000), {}, {400}),
    ("duplicate members", "login", b'{"email": "a@x.io", "email": "b@x.io"}', {}, {400}),
    ("two megabytes", "login", b'{"email": "' + b"x" * 2_000_000 + b'"}', {}, {413}),
    ("text/plain", "login", VICTIM, typed("text/plain"), {415}),
    ("form", "validate", b"token=abc", typed("application/x-www-form-urlencoded"), {415}),
    ("utf-16 charset", "login", UTF16, typed("application/json; charset=utf-16"), {400}),
    ("odd bearer", "refresh", b"", {"Authorization": "Bearer \xff\xfe\x00"}, {401}),
    ("long bearer", "refresh", b"", bearer("a" * 6000), {401}),
    ("forged sub", "activate", body(client_id="c"), bearer("e30.eyJzdWIiOnt9fQ.x"), {401}),
    ("odd forwarded-for", "login", body(email="z@x.io", password="x"), ODD_XFF, {401}),
]
PATHS = {
    "validate": f"{API}/licenses/validate",
    "login": f"{API}/auth/login",
    "register": f"{API}/auth/register",
    "activate": f"{API}/licenses/activate",
    "refresh": f"{API}/auth/refresh",
}


def test_hostile_requests_do_not_reset_limits_already_counted(limited, caplog):
    client = limited.test_client()

    def victim_login():
        return client.post(
            f"{API}/auth/login", json={"email": "victim@example.com", "password": "guess!"}
        )

    def validate_abc():
        return client.post(f"{API}/licenses/validate", json={"token": "abc"})

    assert [victim_login().status_code for _ in range(3)] == [401, 401, 401]
    assert_problem(victim_login(), 429, "rate_limited")
    assert [validate_abc().status_code for _ in range(2)] == [200, 200]
    assert_problem(validate_abc(), 429, "rate_limited")

    wrong = []
    for n, (label, route, body, headers, expected) in enumerate(HOSTILE):
        headers = {"Content-Type": "application/json", **headers}
        # Each from an address of its own: a body without an email or token is limited
        # per address, and these are not about that.
        response = client.post(
            PATHS[route], data=body, headers=headers, environ_base={"REMOTE_ADDR": f"10.0.0.{n}"}
        )
        text = response.get_data(as_text=True)
        if response.status_code not in expected or "Traceback" in text:
            wrong.append(f"{label}: {response.status_code} {text[:200]}")
    assert not wrong, "\n".join(wrong)

    # Limits already counted are still in force: same storage, same counts.
    assert_problem(victim_login(), 429, "rate_limited")
    assert_problem(validate_abc(), 429, "rate_limited")
    assert_problem(
        client.post(f"{API}/auth/login", json={"email": "VICTIM@example.com", "password": "x"}),
        429,
        "rate_limited",
    )
    assert limiter._storage_dead is False
    log = caplog.text
    assert "Traceback" not in log
    assert not [r for r in caplog.records if r.exc_info]
    assert "falling back" not in log and "Failed to rate limit" not in log
    assert "rate-limit key" not in log  # nothing failed: a 2 MB body is the view's 413


def test_a_key_function_that_fails_is_keyed_by_address(app, caplog):
    def broken() -> str:
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    key = rate_limit_key(broken)
    with app.test_request_context(environ_base={"REMOTE_ADDR": "203.0.113.5"}):
        assert key() == "ip:203.0.113.5"
        assert rate_limit_key(lambda: "acct:\ud800")().startswith("h:")
        assert rate_limit_key(lambda: "tok:ab\ncd")().startswith("h:")
        assert rate_limit_key(lambda: "ip:198.51.100.1")() == "ip:198.51.100.1"
    assert "Traceback" not in caplog.text


def test_a_key_is_worked_out_once_per_request(app, caplog):
    # The limiter's plan and flask-limiter's check both ask for a request's keys: one
    # warning per request that failed, and every request keyed afresh.
    calls = []

    def broken() -> str:
        calls.append(1)
        raise ValueError("not a key")

    key = rate_limit_key(broken)
    for n in (1, 2):
        with app.test_request_context(environ_base={"REMOTE_ADDR": f"203.0.113.{n}"}):
            assert key() == key() == f"ip:203.0.113.{n}"
    assert len(calls) == 2
    assert caplog.text.count("rate-limit key broken failed") == 2
