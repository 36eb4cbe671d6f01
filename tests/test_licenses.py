"""Licenses over HTTP on SQLite and PostgreSQL: activation, seats, tokens, validation."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import event, select, update
from sqlalchemy.exc import OperationalError

from app import create_app
from app.admin.models import AuditLog
from app.auth import api as auth_api
from app.auth.accounts.errors import UserNotFound
from app.auth.licensing import service as licensing
from app.auth.licensing.signing import KeySet, generate_key_file
from app.auth.models import License
from app.kernel.db import get_database, get_session, held_connections, transaction, utcnow
from app.kernel.ownership import acting_as
from tests.helpers import (
    PASSWORD,
    as_operator,
    assert_problem,
    audit,
    auth_headers,
    grant_subscription,
    registered,
    rows,
    sql_sent,
)


def account(client, email="ada@example.com") -> dict:
    """A new customer: the registration's body and the headers of a fresh access token."""
    return {**registered(client, email), "headers": auth_headers(client, email)}


def activate(client, who, client_id="laptop-1"):
    return client.post(
        "/api/v1/licenses/activate", json={"client_id": client_id}, headers=who["headers"]
    )


def validate(client, token, client_id=None):
    body = {"token": token} if client_id is None else {"token": token, "client_id": client_id}
    response = client.post("/api/v1/licenses/validate", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


# --- activation ----------------------------------------------------------------------


def test_activation_creates_the_license_and_its_audit_entry(app, client):
    ada = account(client)
    response = activate(client, ada, "laptop-1")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body.keys() == {
        "license_id",
        "user_id",
        "client_id",
        "status",
        "created_at",
        "expires_at",
        "version",
        "token",
    }
    assert (body["user_id"], body["client_id"], body["status"], body["version"]) == (
        ada["user_id"],
        "laptop-1",
        "active",
        1,
    )
    [lic] = rows(app, select(License))
    assert lic.license_id == body["license_id"]
    assert timedelta(days=364) < lic.expires_at - lic.created_at <= timedelta(days=365)
    [entry] = rows(app, select(AuditLog).where(AuditLog.action == "LICENSE_CREATED"))
    assert entry.details == {"license_id": lic.license_id, "client_id": "laptop-1"}
    assert entry.user_id == ada["user_id"]


def test_activating_the_same_client_again_is_idempotent(app, client):
    ada = account(client)
    first = activate(client, ada).get_json()
    again = activate(client, ada)
    assert again.status_code == 200
    assert again.get_json()["license_id"] == first["license_id"]
    assert len(rows(app, select(License))) == 1
    assert len(rows(app, select(AuditLog).where(AuditLog.action == "LICENSE_CREATED"))) == 1


def test_an_expired_license_gives_its_client_back_to_a_new_one(app, client):
    """Activating a client whose license has expired retires that license (revoked,
    `expired_replaced`, audited) and issues a new one: the expired one holds no seat."""
    ada = account(client)
    old = activate(client, ada, "laptop-1").get_json()
    expired = utcnow() - timedelta(seconds=1)
    as_operator(app, lambda s: s.execute(update(License).values(expires_at=expired)))

    again = activate(client, ada, "laptop-1")
    assert again.status_code == 201, again.get_json()
    new = again.get_json()
    assert new["license_id"] != old["license_id"] and new["status"] == "active"
    by_id = {lic.license_id: lic for lic in rows(app, select(License))}
    assert by_id[old["license_id"]].status == "revoked"
    retired = rows(
        app,
        select(AuditLog).where(
            AuditLog.action == "LICENSE_STATUS_CHANGED", AuditLog.user_id == ada["user_id"]
        ),
    )
    assert [entry.details.get("reason") for entry in retired] == ["expired_replaced"]
    me = client.get("/api/v1/auth/me", headers=ada["headers"]).get_json()
    assert me["seats"] == {"limit": 1, "used": 1}


def test_a_client_id_held_by_another_user_is_409(client):
    activate(client, account(client, "ada@example.com"), "shared-box")
    bob = account(client, "bob@example.com")
    assert_problem(activate(client, bob, "shared-box"), 409, "client_id_taken")


def test_the_free_plan_has_one_seat_and_deactivation_frees_it(app, client):
    ada = account(client)
    first = activate(client, ada, "laptop-1").get_json()
    body = assert_problem(activate(client, ada, "laptop-2"), 409, "seat_limit_reached")
    assert body["seats_limit"] == 1
    response = client.delete(f"/api/v1/licenses/{first['license_id']}", headers=ada["headers"])
    assert response.status_code == 200
    assert response.get_json()["status"] == "revoked"
    assert activate(client, ada, "laptop-2").status_code == 201
    # The deactivated client can come back later: a new license, not the revoked one.
    client.delete(
        f"/api/v1/licenses/{activate(client, ada, 'laptop-2').get_json()['license_id']}",
        headers=ada["headers"],
    )
    again = activate(client, ada, "laptop-1")
    assert again.status_code == 201
    assert again.get_json()["license_id"] != first["license_id"]
    me = client.get("/api/v1/auth/me", headers=ada["headers"]).get_json()
    assert me["seats"] == {"limit": 1, "used": 1}


def test_a_subscription_brings_its_seats_and_its_expiry(app, client):
    ada = account(client)
    sub = grant_subscription(app, ada["user_id"], seats=3)
    for i in range(3):
        body = activate(client, ada, f"box-{i}").get_json()
        assert body["expires_at"].startswith(sub.renews_at.strftime("%Y-%m-%d"))
    assert_problem(activate(client, ada, "box-3"), 409, "seat_limit_reached")
    me = client.get("/api/v1/auth/me", headers=ada["headers"]).get_json()
    assert me["plan"] == "pro"
    assert me["subscription"]["seats"] == 3
    assert me["seats"] == {"limit": 3, "used": 3}


def test_activation_with_email_and_password(app, client):
    account(client)
    response = client.post(
        "/api/v1/licenses/activate",
        json={"email": "ADA@example.com", "password": PASSWORD, "client_id": "pc-9"},
    )
    assert response.status_code == 201
    wrong = client.post(
        "/api/v1/licenses/activate",
        json={"email": "ada@example.com", "password": "nope nope", "client_id": "pc-8"},
    )
    assert_problem(wrong, 401, "invalid_credentials")
    assert len(rows(app, select(License))) == 1
    failed = rows(app, select(AuditLog).where(AuditLog.action == "LOGIN_FAILED"))
    assert len(failed) == 1  # a failed activation counts towards the lockout


def test_activation_needs_exactly_one_way_to_authenticate(client):
    ada = account(client)
    assert_problem(
        client.post("/api/v1/licenses/activate", json={"client_id": "x"}), 401, "unauthorized"
    )
    both = client.post(
        "/api/v1/licenses/activate",
        json={"client_id": "x", "email": "ada@example.com", "password": PASSWORD},
        headers=ada["headers"],
    )
    assert_problem(both, 401)


@pytest.mark.parametrize("client_id", ["", "has space", "x" * 129, "semi;colon", "ünï"])
def test_bad_client_ids_are_422(client, client_id):
    ada = account(client)
    assert_problem(activate(client, ada, client_id), 422, "validation_error")


def test_a_failure_between_license_and_audit_leaves_neither(app, client, monkeypatch):
    from app.auth.licensing import service as licensing

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure at the audit insert")

    ada = account(client)
    monkeypatch.setattr(licensing.admin_api, "record_audit", fail)
    assert_problem(activate(client, ada), 500, "internal_error")
    assert rows(app, select(License)) == []
    assert rows(app, select(AuditLog).where(AuditLog.action == "LICENSE_CREATED")) == []


# --- tokens, offline -----------------------------------------------------------------


def test_the_token_verifies_offline_with_only_the_jwks(client):
    token = activate(client, account(client)).get_json()["token"]
    jwks = client.get("/.well-known/jwks.json").get_json()  # what a client ships or caches

    # From here on: PyJWT and the JWKS document only.
    header = pyjwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    [jwk] = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    key = pyjwt.PyJWK(jwk)
    claims = pyjwt.decode(token, key, algorithms=["EdDSA"], issuer="licensing-platform")
    assert claims["client_id"] == "laptop-1"
    assert claims["license_id"].startswith("lic_")
    assert claims["user_id"].startswith("usr_")
    assert claims["exp"] > claims["iat"]

    # A forged token (another key, same kid) does not verify.
    forged = pyjwt.encode(
        claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": header["kid"]}
    )
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(forged, key, algorithms=["EdDSA"])


def test_key_rotation(app_config, tmp_path, signing_key_file):
    new_key = str(tmp_path / "new-key.pem")
    generate_key_file(new_key)
    old_app = create_app(app_config)
    old_client = old_app.test_client()
    old_token = activate(old_client, account(old_client), "old-box").get_json()["token"]

    app_config["LICENSE_SIGNING_KEYS"] = f"{new_key},{signing_key_file}"
    rotated = create_app(app_config)
    client = rotated.test_client()
    jwks = client.get("/.well-known/jwks.json").get_json()
    assert len(jwks["keys"]) == 2
    new_kid = jwks["keys"][0]["kid"]
    bob = account(client, "bob@example.com")
    new_token = activate(client, bob, "new-box").get_json()["token"]
    assert pyjwt.get_unverified_header(new_token)["kid"] == new_kid
    assert pyjwt.get_unverified_header(old_token)["kid"] != new_kid
    assert validate(client, old_token)["code"] == "VALID"  # old tokens keep working
    assert validate(client, new_token)["code"] == "VALID"
    for token in (old_token, new_token):
        kid = pyjwt.get_unverified_header(token)["kid"]
        [jwk] = [k for k in jwks["keys"] if k["kid"] == kid]
        pyjwt.decode(token, pyjwt.PyJWK(jwk), algorithms=["EdDSA"])

    app_config["LICENSE_SIGNING_KEYS"] = new_key  # the old key retired
    retired = create_app(app_config)
    assert validate(retired.test_client(), old_token)["code"] == "INVALID_TOKEN"
    for a in (old_app, rotated, retired):
        a.extensions["db"].dispose()


# --- validation ----------------------------------------------------------------------


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_every_validation_code(app, client, signing_key_file):
    ada = account(client)
    lic = activate(client, ada, "box-1").get_json()
    token = lic["token"]

    verdict = validate(client, token, "box-1")
    assert (verdict["valid"], verdict["code"]) == (True, "VALID")
    assert verdict["license"]["license_id"] == lic["license_id"]
    assert verdict["checked_at"]

    assert validate(client, token, "other-box")["code"] == "CLIENT_MISMATCH"
    assert validate(client, token, "other-box")["license"] is None

    def set_row(**values):
        as_operator(app, lambda s: s.execute(update(License).values(**values)))

    set_row(expires_at=utcnow() - timedelta(seconds=1))
    assert validate(client, token)["code"] == "EXPIRED"
    set_row(expires_at=utcnow() + timedelta(days=1), status="suspended")
    assert validate(client, token)["code"] == "SUSPENDED"
    set_row(status="revoked")
    revoked = validate(client, token)
    assert (revoked["valid"], revoked["code"], revoked["license"]["status"]) == (
        False,
        "REVOKED",
        "revoked",
    )

    keys = KeySet.from_files([signing_key_file])
    ghost = keys.sign(
        license_id="lic_nope",
        user_id="usr_x",
        client_id="c",
        expires_at=utcnow() + timedelta(days=1),
        issued_at=utcnow(),
        version=1,
    )
    verdict = validate(client, ghost)
    assert (verdict["valid"], verdict["code"], verdict["license"]) == (False, "NOT_FOUND", None)

    header, payload, signature = token.split(".")
    claims = pyjwt.decode(token, options={"verify_signature": False})
    bad_tokens = {
        "garbage": "not-a-token",
        "tampered": f"{header}.{_b64({**claims, 'license_id': 'lic_other'})}.{signature}",
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "foreign key": pyjwt.encode(
            {
                "license_id": lic["license_id"],
                "user_id": "u",
                "client_id": "c",
                "exp": 9999999999,
                "iss": "licensing-platform",
            },
            Ed25519PrivateKey.generate(),
            algorithm="EdDSA",
            headers={"kid": pyjwt.get_unverified_header(token)["kid"]},
        ),
        "hs256 with the public key": pyjwt.encode(
            {"license_id": lic["license_id"]}, "x" * 32, algorithm="HS256"
        ),
    }
    for name, bad in bad_tokens.items():
        verdict = validate(client, bad)
        assert (verdict["valid"], verdict["code"], verdict["license"]) == (
            False,
            "INVALID_TOKEN",
            None,
        ), name


def test_validation_rejects_malformed_requests(client):
    assert_problem(client.post("/api/v1/licenses/validate", json={}), 422, "validation_error")
    assert_problem(client.post("/api/v1/licenses/validate", json={"token": "x" * 5000}), 422)
    assert_problem(
        client.post("/api/v1/licenses/validate", data="{", content_type="application/json"), 400
    )


def test_read_after_write_both_ways(app, client):
    ada = account(client)
    token = activate(client, ada).get_json()["token"]
    assert validate(client, token)["code"] == "VALID"  # activated a moment ago
    lic = validate(client, token)["license"]
    with app.app_context():
        session = get_session()
        with transaction(session):
            auth_api.update_license_status(
                session, lic["license_id"], "suspended", lic["version"], actor_id=None
            )
    assert validate(client, token)["code"] == "SUSPENDED"  # suspended a moment ago


def test_validation_is_one_primary_key_lookup_and_no_write(app, client):
    token = activate(client, account(client)).get_json()["token"]
    with app.app_context():
        database = get_database()
        engines = [database.engine, *database.autocommit_engines.values()]

    with sql_sent(*engines) as statements:
        assert validate(client, token)["code"] == "VALID"
    queries = [s for s in statements if not s.startswith(("BEGIN", "SAVEPOINT", "RELEASE"))]
    assert len(queries) == 1, queries
    assert queries[0].lstrip().upper().startswith("SELECT")
    assert "licenses.license_id =" in queries[0]


def round_trips(trace: str) -> int:
    """Exchanges with the server in a libpq protocol trace: each ends with ReadyForQuery."""
    return sum(line.split("\t")[2:3] == ["ReadyForQuery"] for line in trace.splitlines())


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_validation_on_postgresql_is_one_round_trip(app, client, tmp_path):
    """The license is read in autocommit: no pre-ping, BEGIN or ROLLBACK around it
    (ADR 0016); the request's session never touches a connection of its own."""
    import psycopg

    token = activate(client, account(client)).get_json()["token"]
    assert validate(client, token)["code"] == "VALID"  # this thread's reads hold a connection
    with app.app_context():
        database = get_database()
        (reads,) = database.autocommit_engines.values()
    pgconn = held_connections(reads).get().connection.driver_connection.pgconn  # the next read's
    trace = tmp_path / "libpq.trace"
    with trace.open("w") as out:
        pgconn.trace(out.fileno())
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            with sql_sent(database.engine) as main_statements:
                assert validate(client, token)["code"] == "VALID"
        finally:
            pgconn.untrace()
    assert round_trips(trace.read_text()) == 1, trace.read_text()
    assert "licenses.license_id" in trace.read_text()
    assert main_statements == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_validation_on_sqlite_is_one_statement_in_autocommit(app, client):
    """On SQLite too the license is read in autocommit: the one SELECT, without BEGIN or
    ROLLBACK around it; the request's session never touches a connection of its own."""
    token = activate(client, account(client)).get_json()["token"]
    with app.app_context():
        database = get_database()
        (reads,) = database.autocommit_engines.values()
    seen: dict[str, list[str]] = {"main": [], "autocommit": [], "begins": [], "rollbacks": []}
    hooks = [
        (database.engine, "before_cursor_execute", "main"),
        (reads, "before_cursor_execute", "autocommit"),
        (database.engine, "begin", "begins"),
        (reads, "begin", "begins"),
        (database.engine, "rollback", "rollbacks"),
    ]
    listeners = [
        (engine, name, lambda *a, i=into, n=name: seen[i].append(a[2] if len(a) > 2 else n))
        for engine, name, into in hooks
    ]
    for engine, name, listener in listeners:
        event.listen(engine, name, listener)
    try:
        assert validate(client, token)["code"] == "VALID"
    finally:
        for engine, name, listener in listeners:
            event.remove(engine, name, listener)
    assert seen["main"] == [] and seen["rollbacks"] == []
    assert len(seen["autocommit"]) == 1 and "licenses.license_id =" in seen["autocommit"][0]
    # SQLAlchemy's own begin (a no-op in autocommit: no BEGIN sent) came with the held
    # connection's first read, before this one
    assert seen["begins"] == []


def test_activation_decides_on_one_read_after_the_lock(app, client):
    """Everything a new license depends on (the user, a live license of the client, the
    live subscription's terms, the seats taken) is one SELECT before the license's INSERT,
    once the user's row is locked: on PostgreSQL a SELECT … FOR UPDATE before it (which
    finds the user); on SQLite the write transaction is the lock (BEGIN IMMEDIATE: one
    writer at a time), so nothing else is sent."""
    ada = account(client)
    with app.app_context():
        engine = get_database().engine
    with sql_sent(engine) as statements:
        assert activate(client, ada).status_code == 201
    queries = [" ".join(s.split()) for s in statements if not s.startswith("BEGIN")]
    inserted = next(
        i for i, s in enumerate(queries) if s.startswith("INSERT INTO") and ".licenses " in s
    )
    tables = ["licenses", "subscriptions"]
    if engine.dialect.name == "postgresql":
        lock, *reads = queries[:inserted]
        assert "users.user_id" in lock and lock.endswith("FOR UPDATE"), queries
    else:
        reads, tables = queries[:inserted], [*tables, "users"]  # the user's existence
    assert len(reads) == 1, reads
    assert all(f"{table}." in reads[0] for table in tables), reads


def test_activation_read_binds_only_the_request_values(app, client):
    """The statuses activation's read compares with are written into its SQL, never bound:
    a bound status beside a partial index (licenses' live client ids) made SQLite prepare
    the whole statement again at every activation, and an expanding IN list is rewritten
    by SQLAlchemy at every execution. Its parameters are the user, the time, the
    client id (and LIMIT's numbers) only."""
    ada = account(client)
    with app.app_context():
        engine = get_database().engine
    sent: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, *_args):
        sent.append((" ".join(statement.split()), parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert activate(client, ada, client_id="laptop-binds").status_code == 201
    finally:
        event.remove(engine, "before_cursor_execute", record)
    ((sql, parameters),) = [
        (s, p) for s, p in sent if s.startswith("SELECT") and "subscriptions." in s
    ]
    values = list(parameters.values()) if isinstance(parameters, dict) else list(parameters)
    assert not {"active", "past_due", "revoked"} & {v for v in values if isinstance(v, str)}
    assert "'revoked'" in sql and "IN ('active', 'past_due')" in sql, sql
    assert "laptop-binds" in values


def test_activation_for_a_user_that_is_gone_writes_nothing(app):
    """A valid access token of a deleted user: 404 user_not_found, no license, no audit."""
    with app.app_context(), acting_as("auth"):
        session = get_session()
        with pytest.raises(UserNotFound), transaction(session):
            licensing.activate(session, "usr_gone", "laptop-1", ip=None)
        assert session.scalars(select(License)).all() == []
    assert audit(app, "LICENSE_CREATED") == []


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_activation_on_postgresql_is_one_transaction(app, client):
    """The access token's revocation look-up is read in autocommit (ADR 0016), so the
    request's session begins one transaction, the activation's: no BEGIN/ROLLBACK before."""
    ada = account(client)
    with app.app_context():
        database = get_database()
        (reads,) = database.autocommit_engines.values()
    seen: dict[str, list[str]] = {"main": [], "autocommit": [], "begins": []}
    main = lambda _c, _cur, statement, *_a: seen["main"].append(statement)  # noqa: E731
    auto = lambda _c, _cur, statement, *_a: seen["autocommit"].append(statement)  # noqa: E731
    begin = lambda _conn: seen["begins"].append("BEGIN")  # noqa: E731
    event.listen(database.engine, "before_cursor_execute", main)
    event.listen(reads, "before_cursor_execute", auto)
    event.listen(database.engine, "begin", begin)
    try:
        assert activate(client, ada).status_code == 201
    finally:
        event.remove(database.engine, "before_cursor_execute", main)
        event.remove(reads, "before_cursor_execute", auto)
        event.remove(database.engine, "begin", begin)
    assert len(seen["begins"]) == 1
    assert not any("token_revocations" in s for s in seen["main"]), seen["main"]
    assert [s for s in seen["autocommit"] if "token_revocations" in s], seen["autocommit"]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_validation_survives_its_connection_dying(app, client, database_url):
    """Without a pre-ping, a connection the server dropped (a restart, an idle timeout) is
    found dead by the read itself: it is replaced and the read tried again — VALID, not 503."""
    import psycopg

    token = activate(client, account(client)).get_json()["token"]
    assert validate(client, token)["code"] == "VALID"
    with app.app_context():
        (reads,) = get_database().autocommit_engines.values()
    pid = held_connections(reads).get().connection.driver_connection.info.backend_pid
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
    assert validate(client, token)["code"] == "VALID"
    assert validate(client, token)["code"] == "VALID"


def _pings(monkeypatch, engine) -> list[int]:
    """Counts the pool's pings of `engine`'s connections (the dialect's `do_ping`)."""
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection):
        pings.append(1)
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_connection_used_a_moment_ago_is_not_pinged_again(app, client, monkeypatch):
    """A write transaction on a connection checked in milliseconds earlier, with nothing
    from the server waiting on its socket, is not preceded by a ping (one round trip)."""
    ada = account(client)
    grant_subscription(app, ada["user_id"], seats=5)
    assert activate(client, ada, "box-1").status_code == 201
    with app.app_context():
        pings = _pings(monkeypatch, get_database().engine)
    assert activate(client, ada, "box-2").status_code == 201
    assert activate(client, ada, "box-3").status_code == 201
    assert pings == []


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_activation_survives_its_connection_dying(app, client, database_url, monkeypatch):
    """A connection the server ended (a restart, an administrator) since it was checked in
    is pinged, found dead and replaced before the write: 201, not 503, though a write is
    never retried."""
    import psycopg

    ada = account(client)
    grant_subscription(app, ada["user_id"], seats=5)
    assert activate(client, ada, "box-1").status_code == 201
    with app.app_context():
        engine = get_database().engine
        pings = _pings(monkeypatch, engine)
        with engine.connect() as conn:  # every connection the pool holds: one
            pid = conn.connection.driver_connection.info.backend_pid
        assert engine.pool.checkedin() == 1
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
        while admin.execute(gone, (pid,)).fetchone() != (0,):  # the signal is asynchronous
            time.sleep(0.01)
    assert activate(client, ada, "box-2").status_code == 201
    assert pings  # noticed by the ping, not by the write
    assert activate(client, ada, "box-3").status_code == 201


# --- owner endpoints -----------------------------------------------------------------


def test_list_mine_with_keyset_pagination(app, client):
    ada = account(client)
    grant_subscription(app, ada["user_id"], seats=5)
    made = [activate(client, ada, f"box-{i}").get_json()["license_id"] for i in range(5)]
    bob = account(client, "bob@example.com")
    activate(client, bob, "bobs-box")

    seen, cursor = [], None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get("/api/v1/licenses" + query, headers=ada["headers"]).get_json()
        assert len(page["items"]) <= 2
        seen += [item["license_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))  # newest first, each once, none of Bob's
    assert_problem(client.get("/api/v1/licenses?limit=0", headers=ada["headers"]), 422)
    assert_problem(client.get("/api/v1/licenses?limit=101", headers=ada["headers"]), 422)
    assert_problem(
        client.get("/api/v1/licenses?cursor=%%%", headers=ada["headers"]), 422, "invalid_cursor"
    )
    assert_problem(client.get("/api/v1/licenses"), 401)


def test_one_license_is_visible_to_its_owner_and_admins_only(app, client, runner):
    ada = account(client)
    lic = activate(client, ada).get_json()
    bob = account(client, "bob@example.com")
    assert (
        client.get(f"/api/v1/licenses/{lic['license_id']}", headers=ada["headers"]).status_code
        == 200
    )
    assert_problem(
        client.get(f"/api/v1/licenses/{lic['license_id']}", headers=bob["headers"]),
        404,
        "license_not_found",
    )
    assert_problem(
        client.get("/api/v1/licenses/lic_nope", headers=bob["headers"]), 404, "license_not_found"
    )
    assert_problem(
        client.delete(f"/api/v1/licenses/{lic['license_id']}", headers=bob["headers"]), 404
    )
    runner.invoke(
        args=["users", "create-admin", "root@example.com", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    pair = client.post(
        "/api/v1/auth/login", json={"email": "root@example.com", "password": PASSWORD}
    ).get_json()
    admin = {"Authorization": f"Bearer {pair['access_token']}"}
    assert (
        client.get(f"/api/v1/licenses/{lic['license_id']}", headers=admin).get_json()["client_id"]
        == "laptop-1"
    )


def test_deactivation_is_audited_once_and_idempotent(app, client):
    ada = account(client)
    lic = activate(client, ada).get_json()
    for _ in range(2):
        response = client.delete(f"/api/v1/licenses/{lic['license_id']}", headers=ada["headers"])
        assert response.status_code == 200
        assert response.get_json()["status"] == "revoked"
    [entry] = rows(app, select(AuditLog).where(AuditLog.action == "LICENSE_DEACTIVATED"))
    assert entry.details["old_status"] == "active" and entry.details["new_status"] == "revoked"
    assert validate(client, lic["token"])["code"] == "REVOKED"


# --- auth.api for the admin and orders modules ---------------------------------------


def test_optimistic_locking_and_transitions(app, client):
    lic = activate(client, account(client)).get_json()
    with app.app_context():
        session = get_session()
        with transaction(session):
            changed = auth_api.update_license_status(
                session, lic["license_id"], "suspended", 1, actor_id="usr_admin"
            )
        assert changed.version == 2
        with pytest.raises(auth_api.VersionConflict), transaction(session):
            auth_api.update_license_status(
                session, lic["license_id"], "active", 1, actor_id="usr_admin"
            )
        with transaction(session):
            auth_api.update_license_status(
                session, lic["license_id"], "revoked", 2, actor_id="usr_admin"
            )
        with pytest.raises(auth_api.InvalidTransition, match="revoked"), transaction(session):
            auth_api.update_license_status(
                session, lic["license_id"], "active", 3, actor_id="usr_admin"
            )
        with pytest.raises(auth_api.LicenseNotFound), transaction(session):
            auth_api.update_license_status(session, "lic_nope", "active", 1, actor_id="usr_admin")
    changes = rows(
        app,
        select(AuditLog)
        .where(AuditLog.action == "LICENSE_STATUS_CHANGED")
        .order_by(AuditLog.log_id),
    )
    assert [(c.details["old_status"], c.details["new_status"], c.actor_id) for c in changes] == [
        ("active", "suspended", "usr_admin"),
        ("suspended", "revoked", "usr_admin"),
    ]


def test_batch_updates_are_all_or_nothing(app, client):
    ada = account(client)
    grant_subscription(app, ada["user_id"], seats=3)
    ids = [activate(client, ada, f"b{i}").get_json()["license_id"] for i in range(3)]
    updates = [auth_api.StatusUpdate(i, "suspended") for i in ids] + [
        auth_api.StatusUpdate("lic_unknown", "suspended")
    ]
    with app.app_context():
        session = get_session()
        with pytest.raises(auth_api.LicenseNotFound), transaction(session):
            auth_api.batch_update_license_statuses(session, updates, actor_id="usr_admin")
    assert {lic.status for lic in rows(app, select(License))} == {"active"}
    with app.app_context():
        session = get_session()
        with transaction(session):
            auth_api.batch_update_license_statuses(session, updates[:3], actor_id="usr_admin")
    assert {lic.status for lic in rows(app, select(License))} == {"suspended"}


def test_cancelling_a_subscription_suspends_the_newest_licenses(app, client):
    ada = account(client)
    grant_subscription(app, ada["user_id"], seats=3)
    ids = [activate(client, ada, f"c{i}").get_json()["license_id"] for i in range(3)]
    with app.app_context():
        session = get_session()
        with transaction(session):
            cancelled = auth_api.cancel_subscription(session, ada["user_id"], actor_id="ord_1")
            assert cancelled.status == "cancelled"
        assert auth_api.seats_for(session, ada["user_id"]) == {"limit": 1, "used": 1}
    status = {lic.license_id: lic.status for lic in rows(app, select(License))}
    assert [status[i] for i in ids] == ["active", "suspended", "suspended"]  # the oldest stays
    assert len(rows(app, select(AuditLog).where(AuditLog.action == "LICENSE_STATUS_CHANGED"))) == 2
    me = client.get("/api/v1/auth/me", headers=ada["headers"]).get_json()
    assert me["plan"] == "free" and me["subscription"] is None


def test_jwks_is_cacheable_and_documented(client):
    response = client.get("/.well-known/jwks.json")
    assert response.headers["Cache-Control"] == "public, max-age=300"
    [key] = response.get_json()["keys"]
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    spec = client.get("/openapi.json").get_json()
    assert "/.well-known/jwks.json" in spec["paths"]
    assert "/api/v1/licenses/{license_id}" in spec["paths"]


def test_the_readme_offline_example_runs(client, tmp_path):
    """The README's verification snippet, run as a user would, in a separate process."""
    import re
    import subprocess
    import sys

    from tests.helpers import ROOT

    snippet = re.search(
        r"```python\n(# verify_license.py.*?)```", (ROOT / "README.md").read_text(), re.S
    )
    assert snippet is not None
    assert snippet.group(1) == (ROOT / "examples" / "verify_license.py").read_text()
    lic = activate(client, account(client), "readme-box").get_json()
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(client.get("/.well-known/jwks.json").get_json()))
    result = subprocess.run(
        [sys.executable, ROOT / "examples" / "verify_license.py", lic["token"], jwks_file],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == [lic["license_id"], "readme-box"]


def _checkouts(engine) -> list[int]:
    seen: list[int] = []
    event.listen(engine, "checkout", lambda *_a: seen.append(1))
    return seen


def test_validation_reads_on_a_held_connection(app, client, monkeypatch):
    """The license is read on this thread's held connection of the autocommit engine: not
    checked out of the pool and back for every read (as much as the read itself on
    SQLite); a fresh one after a failed read, after DB_POOL_RECYCLE, in a forked child;
    Database.dispose returns it to the pool."""
    from app.kernel import db

    token = activate(client, account(client)).get_json()["token"]
    with app.app_context():
        database = get_database()
        (reads,) = database.autocommit_engines.values()
    checkouts = _checkouts(reads)
    for _ in range(3):
        assert validate(client, token)["code"] == "VALID"
    assert checkouts == []
    held = held_connections(reads).get()

    recycle = reads.pool._recycle  # PostgreSQL's DB_POOL_RECYCLE; SQLite's files: none (-1)
    later = time.monotonic() + max(recycle, 3600) + 1
    with monkeypatch.context() as m:  # older than the pool's recycle time: replaced
        m.setattr(db.time, "monotonic", lambda: later)
        assert validate(client, token)["code"] == "VALID"
    assert (held.closed, len(checkouts)) == ((True, 1) if recycle >= 0 else (False, 0))
    del checkouts[:]
    held = held_connections(reads).get()

    def broken(*_args, **_kwargs):
        raise OperationalError("SELECT", {}, Exception("the database went away"))

    current = held_connections(reads).get()
    with monkeypatch.context() as m:  # a read that fails: the next starts afresh
        m.setattr(current, "execute", broken)
        assert client.post("/api/v1/licenses/validate", json={"token": token}).status_code == 503
    assert current.closed
    assert validate(client, token)["code"] == "VALID" and len(checkouts) == 1
    held = held_connections(reads).get()

    with monkeypatch.context() as m:  # a forked child: never the parent's socket, left alone
        m.setattr(db.os, "getpid", lambda: -1)
        assert validate(client, token)["code"] == "VALID"
        child = held_connections(reads).get()
        assert len(checkouts) == 2 and child is not held and not held.closed
        # kept referenced: freed, it would go back to the pool the child inherited
        assert held_connections(reads)._parents == [held]
        database.dispose()  # the child's own goes back; the parent's stays untouched
        assert child.closed and not held.closed


def test_threads_other_than_the_main_one_hold_no_read_connection(app, client):
    """A threaded server (gunicorn --threads, the development server): only the main thread
    keeps a read connection; the others check one out per read, so more threads than the
    pool has connections, all alive at once, never wait for one (the outside test: a
    connection held per thread ran the pool dry, 503 after 10 s)."""
    import threading

    token = activate(client, account(client)).get_json()["token"]
    with app.app_context():
        (reads,) = get_database().autocommit_engines.values()
    threads = reads.pool.size() + reads.pool._max_overflow + 3
    together = threading.Barrier(threads)
    answers: list[str] = []

    def serve() -> None:
        own = app.test_client()
        for _ in range(3):
            answers.append(validate(own, token)["code"])
        together.wait(timeout=30)  # every thread still alive while the others read

    started = time.monotonic()
    workers = [threading.Thread(target=serve) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert answers == ["VALID"] * (3 * threads)
    assert time.monotonic() - started < reads.pool._timeout  # nobody waited for the pool
    assert reads.pool.checkedout() <= 1  # the main thread's, if it read
