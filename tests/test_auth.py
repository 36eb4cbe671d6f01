"""Accounts and tokens over HTTP, on SQLite and PostgreSQL (README: Using the API)."""

from __future__ import annotations

import base64
import json
import secrets
import time
from datetime import timedelta

import jwt as pyjwt
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from app import create_app
from app.auth.models import TokenRevocation, User
from app.kernel.db import get_session, transaction, utcnow
from app.kernel.ownership import OPERATOR, acting_as
from tests.helpers import (
    PASSWORD,
    assert_problem,
    audit,
    bearer,
    login,
    register,
    respellings,
    sign_up,
)


def users(app) -> list[User]:
    with app.app_context(), acting_as(OPERATOR):
        return list(get_session().scalars(select(User)))


def claims_of(token: str) -> dict:
    return pyjwt.decode(token, options={"verify_signature": False})


# --- registration --------------------------------------------------------------------


def test_register_creates_a_normalised_account_and_audits_it(app, client):
    response = register(client, "  Ada@Example.COM ", ip="203.0.113.7")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body.keys() == {"user_id", "email", "plan", "role", "created_at"}
    assert body["email"] == "ada@example.com"
    assert (body["plan"], body["role"]) == ("free", "user")
    assert body["user_id"].startswith("usr_")
    assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")
    assert "password" not in response.get_data(as_text=True)

    [user] = users(app)
    assert user.email == "ada@example.com"
    assert user.password_hash.startswith("$argon2id$")
    [entry] = audit(app, "USER_REGISTERED")
    assert entry.user_id == user.user_id
    assert entry.ip_address == "203.0.113.7"


def test_register_twice_is_409_whatever_the_case(client):
    assert register(client).status_code == 201
    assert_problem(register(client, "ADA@example.com"), 409, "email_taken")


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({"email": "not-an-email", "password": PASSWORD}, ("json", "email")),
        ({"email": "a@example.com", "password": "short"}, ("json", "password")),
        ({"email": "a@example.com"}, ("json", "password")),
        ({"email": "a@example.com", "password": PASSWORD, "role": "admin"}, ("json", "role")),
        ({"email": "a@example.com", "password": 12345678}, ("json", "password")),
    ],
)
def test_register_rejects_bad_input_with_422(client, payload, loc):
    body = assert_problem(
        client.post("/api/v1/auth/register", json=payload), 422, "validation_error"
    )
    assert loc in {tuple(e["loc"]) for e in body["errors"]}


def test_a_one_megabyte_password_is_a_422_not_a_slow_hash(app, client, monkeypatch):
    hashed = []
    monkeypatch.setattr(PasswordHasher, "hash", lambda self, pw, **kw: hashed.append(pw))
    response = register(client, password="x" * 1_000_000)
    assert_problem(response, 422, "validation_error")
    assert hashed == []
    assert users(app) == []


def test_register_malformed_json_is_400(client):
    response = client.post("/api/v1/auth/register", data="{", content_type="application/json")
    assert_problem(response, 400, "malformed_json")


def test_failure_after_the_audit_write_leaves_neither_row(app, client, monkeypatch):
    from app.admin import api as admin_api
    from app.auth.accounts import service

    real = admin_api.record_audit

    def record_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("injected failure after the audit write")

    monkeypatch.setattr(service.admin_api, "record_audit", record_then_fail)
    assert_problem(register(client), 500, "internal_error")
    assert users(app) == []
    assert audit(app) == []


# --- login ---------------------------------------------------------------------------


def test_login_returns_a_bearer_pair_with_the_role(client):
    register(client)
    response = login(client, "ADA@example.com")
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    access, refresh = claims_of(body["access_token"]), claims_of(body["refresh_token"])
    assert access["type"] == "access" and refresh["type"] == "refresh"
    assert access["role"] == "user"
    assert access["fam"] == refresh["fam"]
    assert access["exp"] - access["iat"] == 900


def test_unknown_email_and_wrong_password_look_the_same(app, client, monkeypatch):
    register(client)
    verified = []
    real_verify = PasswordHasher.verify

    def counting_verify(self, hash_, password):
        verified.append(hash_)
        return real_verify(self, hash_, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting_verify)
    unknown = login(client, "nobody@example.com", PASSWORD)
    wrong = login(client, "ada@example.com", "wrong password!")
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.get_json() == wrong.get_json()
    assert unknown.get_json()["code"] == "invalid_credentials"
    # Both paths ran one argon2 verification of the same cost (the unknown email against a
    # dummy hash), which is what makes their timing similar.
    assert len(verified) == 2
    params = {h.split("$")[3] for h in verified}
    assert len(params) == 1
    failed = audit(app, "LOGIN_FAILED")
    assert [e.details["reason"] for e in failed] == ["unknown_email", "wrong_password"]


def test_a_success_resets_the_failure_count(client):
    register(client)
    for _ in range(4):
        login(client, password="wrong password!")
    assert login(client).status_code == 200
    for _ in range(4):
        assert login(client, password="wrong password!").status_code == 401
    assert login(client).status_code == 200


def test_login_rehashes_when_the_parameters_change(app_config, client):
    register(client)  # hashed with the cheap test parameters
    app_config.update(ARGON2_TIME_COST=2, ARGON2_MEMORY_COST=19 * 1024)
    owasp = create_app(app_config)
    try:
        assert login(owasp.test_client()).status_code == 200
        [user] = users(owasp)
        assert "$m=19456,t=2,p=1$" in user.password_hash
        assert login(owasp.test_client()).status_code == 200
        assert [e.details["rehashed"] for e in audit(owasp, "LOGIN_SUCCEEDED")] == [True, False]
    finally:
        owasp.extensions["db"].dispose()


def test_default_parameters_are_owasps(tmp_path):
    from app.config import load_config

    config = load_config(tmp_path, env={})
    assert (
        config["ARGON2_TIME_COST"],
        config["ARGON2_MEMORY_COST"],
        config["ARGON2_PARALLELISM"],
    ) == (
        2,
        19456,
        1,
    )


# --- tokens --------------------------------------------------------------------------


def test_me_shows_the_user_and_seats(client):
    pair = sign_up(client)
    response = client.get("/api/v1/auth/me", headers=bearer(pair.access))
    assert response.status_code == 200
    body = response.get_json()
    assert body["email"] == "ada@example.com"
    assert body["seats"] == {"limit": 1, "used": 0}
    assert body["subscription"] is None


def test_refresh_rotates_and_reuse_revokes_the_family(app, client):
    first = sign_up(client)
    response = client.post("/api/v1/auth/refresh", headers=bearer(first.refresh))
    assert response.status_code == 200
    second = response.get_json()
    assert second["refresh_token"] != first.refresh
    assert claims_of(second["refresh_token"])["fam"] == claims_of(first.refresh)["fam"]
    assert client.get("/api/v1/auth/me", headers=bearer(second["access_token"])).status_code == 200

    # The rotated-out refresh token comes back: someone has a copy.
    replay = client.post("/api/v1/auth/refresh", headers=bearer(first.refresh))
    assert_problem(replay, 401, "token_revoked")
    # The whole family is dead: the newer refresh token and the access tokens too.
    assert_problem(
        client.post("/api/v1/auth/refresh", headers=bearer(second["refresh_token"])),
        401,
        "token_revoked",
    )
    assert_problem(
        client.get("/api/v1/auth/me", headers=bearer(second["access_token"])), 401, "token_revoked"
    )
    assert_problem(
        client.get("/api/v1/auth/me", headers=bearer(first.access)), 401, "token_revoked"
    )
    [entry] = audit(app, "TOKEN_REUSE_DETECTED")
    assert entry.details["family"] == claims_of(first.refresh)["fam"]
    # Other sessions of the same user are unaffected.
    other = login(client).get_json()
    assert client.get("/api/v1/auth/me", headers=bearer(other["access_token"])).status_code == 200


def test_logout_revokes_access_and_refresh_at_once(app, client):
    pair = sign_up(client)
    response = client.post("/api/v1/auth/logout", headers=bearer(pair.access))
    assert response.status_code == 204
    assert response.get_data() == b""
    assert_problem(client.get("/api/v1/auth/me", headers=bearer(pair.access)), 401, "token_revoked")
    assert_problem(
        client.post("/api/v1/auth/refresh", headers=bearer(pair.refresh)),
        401,
        "token_revoked",
    )
    assert len(audit(app, "LOGOUT")) == 1


def test_revocations_survive_a_restart(app_config, client):
    pair = sign_up(client)
    client.post("/api/v1/auth/logout", headers=bearer(pair.access))
    restarted = create_app(app_config)
    try:
        response = restarted.test_client().get("/api/v1/auth/me", headers=bearer(pair.access))
        assert_problem(response, 401, "token_revoked")
    finally:
        restarted.extensions["db"].dispose()


def _forge(claims: dict, key: str) -> str:
    return pyjwt.encode(claims, key, algorithm="HS256")


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_bad_tokens_are_401_problems(app, client):
    pair = sign_up(client)
    access = pair.access
    good = claims_of(access)
    header, _payload, signature = access.split(".")
    tampered_payload = _b64({**good, "role": "admin"})
    # The good token verified first (and remembered): its forgeries are still refused.
    assert client.get("/api/v1/auth/me", headers=bearer(access)).status_code == 200
    cases = {
        "missing": ({}, "unauthorized"),
        "garbage": (bearer("not.a.token"), "invalid_token"),
        "tampered": (bearer(f"{header}.{tampered_payload}.{signature}"), "invalid_token"),
        "wrong key": (bearer(_forge(good, key="x" * 40)), "invalid_token"),
        "alg none": (
            bearer(f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(good)}."),
            "invalid_token",
        ),
        "expired": (
            bearer(
                _forge(
                    {**good, "exp": good["iat"] - 10, "nbf": good["iat"] - 100},
                    key=app.config["JWT_SECRET_KEY"],
                )
            ),
            "token_expired",
        ),
        "refresh as access": (bearer(pair.refresh), "invalid_token"),
        "basic scheme": ({"Authorization": "Basic YTpi"}, "unauthorized"),
    }
    for name, (headers, code) in cases.items():
        response = client.get("/api/v1/auth/me", headers=headers)
        body = assert_problem(response, 401, code)
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
        assert "Signature" not in body["detail"], name

    # And an access token is not a refresh token.
    assert_problem(
        client.post("/api/v1/auth/refresh", headers=bearer(access)), 401, "invalid_token"
    )


def test_the_bearer_scheme_is_case_insensitive(client):
    """RFC 9110 11.1: an authentication scheme's name is case-insensitive (some clients send
    `bearer`); the token itself is not."""
    access = sign_up(client).access
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        response = client.get("/api/v1/auth/me", headers={"Authorization": f"{scheme} {access}"})
        assert response.status_code == 200, scheme
    swapped = access.swapcase()
    assert client.get("/api/v1/auth/me", headers=bearer(swapped)).status_code == 401


def test_a_token_is_accepted_only_as_it_was_written(client):
    """The same signed bytes spelled otherwise (padding, the unused bits of the last
    character, characters outside base64url) are not the token that was issued: refused,
    also after the token itself was verified and remembered."""
    access = sign_up(client).access
    assert client.get("/api/v1/auth/me", headers=bearer(access)).status_code == 200
    for name, spelling in respellings(access).items():
        response = client.get("/api/v1/auth/me", headers=bearer(spelling))
        assert response.status_code == 401, name
    assert client.get("/api/v1/auth/me", headers=bearer(access)).status_code == 200


def test_an_accepted_token_is_refused_from_its_expiry_on(app, client):
    """A token verified once is remembered, but its expiry is checked on every request."""
    good = claims_of(sign_up(client).access)
    exp = int(time.time()) + 2
    token = _forge({**good, "exp": exp}, key=app.config["JWT_SECRET_KEY"])
    assert client.get("/api/v1/auth/me", headers=bearer(token)).status_code == 200
    while time.time() < exp:  # expired from `exp` on (no leeway)
        time.sleep(0.05)
    assert_problem(client.get("/api/v1/auth/me", headers=bearer(token)), 401, "token_expired")


def test_a_remembered_tokens_header_is_not_parsed_again(app, client, monkeypatch):
    """flask-jwt-extended parses the token's header again after decoding it (for the
    revocation and freshness checks): for a remembered token it comes with the claims,
    parsed when it was decoded, not on every request — and it is that token's header, a copy each time."""
    from flask_jwt_extended import get_jwt_header

    from app.http.bearer import verify_jwt_in_request

    access = sign_up(client).access
    parsed: list[str] = []
    parse = pyjwt.get_unverified_header
    monkeypatch.setattr(
        pyjwt, "get_unverified_header", lambda token: parsed.append(token) or parse(token)
    )
    assert client.get("/api/v1/auth/me", headers=bearer(access)).status_code == 200
    first = len(parsed)  # decoding it (a miss) parsed it
    for _ in range(2):
        assert client.get("/api/v1/auth/me", headers=bearer(access)).status_code == 200
    assert len(parsed) == first
    for _ in range(2):
        with app.test_request_context(headers=bearer(access)):
            verify_jwt_in_request()
            header = get_jwt_header()
            assert header == parse(access) == {"alg": "HS256", "typ": "JWT"}
            header["alg"] = "none"  # a caller's change does not leak into the next request
    assert len(parsed) == first and set(parsed) == {access}


def test_an_accepted_token_is_refused_by_an_app_with_another_secret(app_config, client):
    """What one app verified is not taken on trust by another with a different key."""
    access = sign_up(client).access
    assert client.get("/api/v1/auth/me", headers=bearer(access)).status_code == 200
    other = create_app({**app_config, "JWT_SECRET_KEY": secrets.token_urlsafe(48)})
    try:
        response = other.test_client().get("/api/v1/auth/me", headers=bearer(access))
        assert_problem(response, 401, "invalid_token")
    finally:
        other.extensions["db"].dispose()


def test_prune_removes_only_expired_revocations(app, runner):
    with app.app_context(), acting_as(OPERATOR):
        session = get_session()
        with transaction(session):
            now = utcnow()
            session.add_all(
                [
                    TokenRevocation(
                        key="old", kind="token", reason="logout", expires_at=now - timedelta(days=1)
                    ),
                    TokenRevocation(
                        key="new", kind="token", reason="logout", expires_at=now + timedelta(days=1)
                    ),
                ]
            )
    result = runner.invoke(args=["tokens", "prune"])
    assert result.exit_code == 0, result.output
    assert "pruned 1 expired revocation(s)" in result.output
    with app.app_context(), acting_as(OPERATOR):
        assert list(get_session().scalars(select(TokenRevocation.key))) == ["new"]


# --- create-admin --------------------------------------------------------------------


def test_create_admin_from_stdin(app, client, runner):
    result = runner.invoke(
        args=["users", "create-admin", "Root@Example.com", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    assert "created admin root@example.com" in result.output
    [user] = users(app)
    assert user.role == "admin"
    pair = login(client, "root@example.com").get_json()
    assert claims_of(pair["access_token"])["role"] == "admin"
    assert audit(app, "ADMIN_CREATED")[0].details["role"] == "admin"


def test_create_admin_prompts_hidden_and_confirmed(app, runner):
    result = runner.invoke(
        args=["users", "create-admin", "root@example.com"], input=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output  # hidden input is not echoed
    assert "Repeat for confirmation" in result.output

    mismatch = runner.invoke(
        args=["users", "create-admin", "b@example.com"], input=f"{PASSWORD}\nother password\n"
    )
    assert mismatch.exit_code != 0
    assert len(users(app)) == 1


@pytest.mark.parametrize("email", ["not-an-email", "root@example", "root@example.test"])
def test_create_admin_refuses_an_address_register_refuses(app, client, runner, email):
    """`users create-admin 'not-an-email'` created an admin with that address, where
    register answers 422: the CLI checks it the same way (one line, exit 1)."""
    assert_problem(register(client, email), 422, "validation_error")
    result = runner.invoke(
        args=["users", "create-admin", email, "--password-stdin"], input=PASSWORD + "\n"
    )
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: value is not a valid email address: "), line
    assert users(app) == []


def test_create_admin_refuses_weak_passwords_and_duplicates(app, runner):
    weak = runner.invoke(
        args=["users", "create-admin", "root@example.com", "--password-stdin"], input="short\n"
    )
    assert weak.exit_code == 1
    assert "8 to 128 characters" in weak.output
    runner.invoke(
        args=["users", "create-admin", "root@example.com", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    again = runner.invoke(
        args=["users", "create-admin", "ROOT@example.com", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert again.exit_code == 1
    assert "already exists" in again.output
    assert len(users(app)) == 1


def test_openapi_documents_the_auth_routes(client):
    spec = client.get("/openapi.json").get_json()
    for path in (
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/auth/logout",
    ):
        assert "post" in spec["paths"][path], path
    register_op = spec["paths"]["/api/v1/auth/register"]["post"]
    assert "application/problem+json" in register_op["responses"]["409"]["content"]
    assert spec["paths"]["/api/v1/auth/me"]["get"]["security"] == [{"BearerAuth": []}]


def test_unknown_email_costs_the_same_argon2_work_as_wrong_password(client, monkeypatch):
    """(an independent review: unknown emails cost a hash and a verification, wrong
    passwords one verification)"""
    register(client)
    calls = []
    real_hash, real_verify = PasswordHasher.hash, PasswordHasher.verify
    monkeypatch.setattr(
        PasswordHasher, "hash", lambda *a, **k: calls.append("hash") or real_hash(*a, **k)
    )
    monkeypatch.setattr(
        PasswordHasher,
        "verify",
        lambda *a, **k: calls.append("verify") or real_verify(*a, **k),
    )
    client.post("/api/v1/auth/login", json={"email": "ada@example.com", "password": "wrong-pass"})
    wrong = list(calls)
    calls.clear()
    client.post(
        "/api/v1/auth/login", json={"email": "nobody@example.com", "password": "wrong-pass"}
    )
    assert calls == wrong == ["verify"]  # observed before the fix: ['hash', 'verify'] vs ['verify']
