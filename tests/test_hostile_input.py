"""Hostile input: SQL injection, oversized and deeply nested bodies, invalid UTF-8, NUL
bytes, very long strings, wrong types, odd query values and cursors — each answered with a
clear 4xx problem+json (never a 5xx), and nothing stored that should not be.

In process (the test client) on SQLite and PostgreSQL. The real-server half (nginx in front
of gunicorn: huge request lines and headers, slow clients) is at the end, marked slow.
Every test counts what it tried; the module prints `hostile: N requests, M held` and, when
SOAK_REPORT names a file, appends {"category": "hostile", "tried": N, "held": M} to it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from select import select as wait_readable
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import func, inspect, select

from app.auth.models import User
from app.config import load_config, rate_limit_settings
from app.kernel.db import get_database, get_session
from app.kernel.ownership import OPERATOR, acting_as
from app.models import metadata
from tests.helpers import (
    API,
    PASSWORD,
    auth_headers,
    free_port,
    gunicorn_server,
    login,
    nginx_call,
    nginx_in_front_of,
    register,
    registered,
    sign_up,
    soak_report,
)

# Classic injection strings, for string fields, query values and path segments.
SQLI = [
    "' OR '1'='1",
    "' OR 1=1 --",
    "admin@example.com' --",
    '" OR ""="',
    "'; DROP TABLE users; --",
    "1; DELETE FROM licenses",
    "' UNION SELECT password_hash, email FROM users --",
    "%' OR email LIKE '%",
    "\\'; SELECT pg_sleep(10); --",
    "') OR ('a'='a",
    "1' AND (SELECT COUNT(*) FROM users) > 0 --",
    "x'||(SELECT password_hash FROM users LIMIT 1)||'",
]
# Injection strings that are still valid email addresses: accepted, stored literally.
SQLI_EMAILS = ["x'or'1'='1@example.com", "o'reilly--@example.com", "a'||'b@example.com"]


# --- counting and checking -----------------------------------------------------------

TOTALS = {"tried": 0, "held": 0}


@dataclass
class Tally:
    """Records every request's verdict; the test asserts at the end, listing all failures."""

    tried: int = 0
    held: int = 0
    failures: list[str] = field(default_factory=list)

    def check(
        self,
        label: str,
        response,
        allowed: Iterable[int] | Callable[[int], bool],
        code: str | None = None,
    ):
        """An allowed status, never a 5xx; errors as complete problem+json (with `code`)."""
        self.tried += 1
        wrong = why_not(response, allowed, code)
        if wrong is None:
            self.held += 1
        else:
            self.failures.append(f"{label}: {wrong}")
        return response

    def expect(self, label: str, ok: bool, why: str) -> None:
        """A check on something other than one response (rows, stored values)."""
        self.tried += 1
        if ok:
            self.held += 1
        else:
            self.failures.append(f"{label}: {why}")

    def assert_held(self) -> None:
        assert self.tried > 0
        assert not self.failures, f"{len(self.failures)} of {self.tried} failed:\n" + "\n".join(
            self.failures[:60]
        )


def why_not(response, allowed, code: str | None = None) -> str | None:
    status = response.status_code
    text = response.get_data(as_text=True)
    ok = allowed(status) if callable(allowed) else status in set(allowed)
    if status >= 500 or not ok:
        return f"status {status}: {text[:300]}"
    if status >= 400:
        if response.mimetype != "application/problem+json":
            return f"{status} as {response.mimetype}"
        body = response.get_json()
        if not {"type", "title", "status", "detail", "code"} <= body.keys():
            return f"incomplete problem {body}"
        if code is not None and body["code"] != code:
            return f"code {body['code']!r}, expected {code!r}"
    if "Traceback" in text or 'File "' in text:
        return "a stack trace in the response"
    return None


def client_error(status: int) -> bool:
    return 400 <= status < 500


@pytest.fixture(scope="module", autouse=True)
def report_totals():
    yield
    line = f"hostile: {TOTALS['tried']} requests, {TOTALS['held']} held"
    print("\n" + line)
    if TOTALS["tried"]:
        soak_report("hostile", TOTALS["tried"], TOTALS["held"])


def counted(t: Tally) -> Iterator[Tally]:
    """A fixture's tally, added to the session's totals when the test ends."""
    yield t
    TOTALS["tried"] += t.tried
    TOTALS["held"] += t.held


@pytest.fixture
def tally():
    yield from counted(Tally())


# --- a world to attack ---------------------------------------------------------------


@pytest.fixture
def world(client, runner) -> dict[str, Any]:
    return build_world(client, runner)


def build_world(client, runner) -> dict[str, Any]:
    """Ada (a user with a license and a paid order) and root (an admin), logged in."""
    registered(client, "ada@example.com")
    result = runner.invoke(
        args=["users", "create-admin", "root@example.com", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    user, admin = auth_headers(client), auth_headers(client, "root@example.com")
    # Changing a password ends its tokens: the password route is called as an account of
    # its own, so a body that is accepted there does not log Ada out of the other routes.
    registered(client, "cy@example.com")
    changer = auth_headers(client, "cy@example.com")
    lic = client.post(f"{API}/licenses/activate", json={"client_id": "box-1"}, headers=user)
    assert lic.status_code == 201
    order = client.post(
        f"{API}/orders",
        json={"plan": "pro", "payment_token": "tok_ok"},
        headers={**user, "Idempotency-Key": "first"},
    )
    assert order.status_code == 201
    client.application.config["WEBHOOKS_ALLOW_PRIVATE"] = True  # a receiver on loopback
    webhook = client.post(
        f"{API}/admin/webhooks",
        json={"url": "http://127.0.0.1:9/hooks", "events": ["order.paid"]},
        headers=admin,
    )
    assert webhook.status_code == 201, webhook.get_json()
    return {
        "user": user,
        "admin": admin,
        "changer": changer,
        "license": lic.get_json(),
        "order": order.get_json(),
        "webhook": webhook.get_json(),
    }


def counts(app) -> dict[str, int]:
    """Rows per table (and, by asking, that every table is still there)."""
    with app.app_context(), acting_as(OPERATOR):
        session = get_session()
        return {
            table.name: session.scalar(select(func.count()).select_from(table))
            for table in metadata.sorted_tables
        }


def users_with_email(app, email: str) -> list[str]:
    with app.app_context(), acting_as(OPERATOR):
        return list(get_session().scalars(select(User.email).where(User.email == email)))


def existing_tables(app) -> set[str]:
    with app.app_context(), acting_as(OPERATOR):
        engine = get_database().engine
        inspector = inspect(engine)
        return {
            name
            for schema in inspector.get_schema_names()
            if schema not in ("information_schema", "pg_catalog", "pg_toast")
            for name in inspector.get_table_names(schema=schema)
        }


def body_operations(client) -> list[tuple[str, str]]:
    """(method, OpenAPI path) of every operation that takes a JSON body."""
    spec = client.get("/openapi.json").get_json()
    return sorted(
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "requestBody" in operation
    )


def concrete(path: str, world: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The OpenAPI path with real ids filled in, and the headers that get a caller in."""
    path = path.replace("{license_id}", world["license"]["license_id"])
    path = path.replace("{order_id}", world["order"]["order_id"])
    path = path.replace("{webhook_id}", world["webhook"]["webhook_id"])
    if path.endswith("/auth/password"):
        headers = dict(world["changer"])
    else:
        headers = dict(world["admin"] if "/admin/" in path else world["user"])
    headers["Idempotency-Key"] = "hostile"
    headers["If-Match"] = '"1"'
    return path, headers


# --- SQL injection -------------------------------------------------------------------


def assert_inert(app, client, world, tally, baseline: tuple[dict, set], new_users: int = 0):
    """After the attempts: every table still there, no row but the `new_users` accounts
    added, one paid order (the world's), and Ada and the admin still who they were."""
    user, admin = world["user"], world["admin"]
    before, tables = baseline
    after = counts(app)
    tally.expect("tables", existing_tables(app) == tables, "a table went missing")
    tally.expect(
        "users",
        after["users"] == before["users"] + new_users,
        f"{before['users']} -> {after['users']}",
    )
    for table in ("licenses", "subscriptions", "token_revocations"):
        tally.expect(table, after[table] == before[table], f"{before[table]} -> {after[table]}")
    # Declined orders are recorded as failed orders; nothing was paid.
    with app.app_context(), acting_as(OPERATOR):
        from app.orders.models import Order

        paid = get_session().scalar(
            select(func.count()).select_from(Order).where(Order.status == "paid")
        )
    tally.expect("paid orders", paid == 1, f"{paid} paid orders")
    # Everyone can still do what they could.
    tally.check("ada still logs in", client.get(f"{API}/auth/me", headers=user), [200])
    tally.check("admin still admin", client.get(f"{API}/admin/stats/users", headers=admin), [200])
    tally.assert_held()


def test_sql_injection_in_account_fields_is_inert(app, client, world, tally):
    before = counts(app), existing_tables(app)
    signed_up = []
    for s in SQLI:
        # auth: nothing may log in, nothing may be created from a malformed email
        tally.check(
            f"register email {s!r}",
            register(client, s),
            [422],
        )
        tally.expect(f"no user {s!r}", users_with_email(app, s) == [], "a user was stored")
        tally.check(
            f"login email {s!r}",
            client.post(f"{API}/auth/login", json={"email": s, "password": s.ljust(8, "x")}),
            [401],
        )
        tally.check(
            f"login password {s!r}",
            client.post(f"{API}/auth/login", json={"email": "ada@example.com", "password": s}),
            [401, 423],  # five failures lock the account: also a refusal
        )
        tally.check(
            f"login admin {s!r}",
            client.post(f"{API}/auth/login", json={"email": "root@example.com' --", "password": s}),
            [401, 423],  # an email without an account is throttled like one with
        )
    # Injection strings that are valid addresses are stored exactly as sent (parameters).
    for email in SQLI_EMAILS:
        tally.check(
            f"register {email!r}",
            register(client, email),
            [201],
        )
        signed_up.append(email)
        tally.expect(f"stored {email!r}", users_with_email(app, email) == [email], "not literal")
        tally.check(
            f"login {email!r}",
            login(client, email),
            [200],
        )
    # A password full of quotes works as a password, nothing more.
    quoted = "' OR '1'='1' --"
    tally.check(
        "register quoted password",
        register(client, "q@example.com", quoted),
        [201],
    )
    signed_up.append("q@example.com")
    tally.check(
        "login quoted password",
        login(client, "q@example.com", quoted),
        [200],
    )
    tally.check(
        "login other password",
        client.post(f"{API}/auth/login", json={"email": "q@example.com", "password": "' OR 1=1"}),
        [401],
    )

    assert_inert(app, client, world, tally, before, new_users=len(signed_up))


def test_sql_injection_in_license_fields_is_inert(app, client, world, tally):
    user, lic = world["user"], world["license"]
    before = counts(app), existing_tables(app)
    for i, s in enumerate(SQLI):
        # licenses
        tally.check(
            f"activate client_id {s!r}",
            client.post(f"{API}/licenses/activate", json={"client_id": s}, headers=user),
            [422],
        )
        tally.check(
            f"activate credentials {s!r}",
            client.post(
                f"{API}/licenses/activate",
                json={"client_id": f"sqli-{i}", "email": s, "password": s},
            ),
            [401],
        )
        verdict = tally.check(
            f"validate token {s!r}",
            client.post(f"{API}/licenses/validate", json={"token": s}),
            [200],
        )
        tally.expect(
            f"validate token {s!r} is invalid",
            verdict.get_json().get("code") == "INVALID_TOKEN",
            str(verdict.get_json()),
        )
        verdict = tally.check(
            f"validate client_id {s!r}",
            client.post(f"{API}/licenses/validate", json={"token": lic["token"], "client_id": s}),
            [200, 422],
        )
        if verdict.status_code == 200:
            tally.expect(
                f"validate client_id {s!r} mismatches",
                verdict.get_json()["code"] == "CLIENT_MISMATCH",
                str(verdict.get_json()),
            )
    assert_inert(app, client, world, tally, before)


def test_sql_injection_in_order_fields_is_inert(app, client, world, tally):
    user = world["user"]
    before = counts(app), existing_tables(app)
    for i, s in enumerate(SQLI):
        # orders
        tally.check(
            f"order plan {s!r}",
            client.post(
                f"{API}/orders",
                json={"plan": s[:32], "payment_token": "tok_ok"},
                headers={**user, "Idempotency-Key": f"sqli-plan-{i}"},
            ),
            [422],
        )
        tally.check(
            f"order payment_token {s!r}",
            client.post(
                f"{API}/orders",
                json={"plan": "pro", "payment_token": s},
                headers={**user, "Idempotency-Key": f"sqli-token-{i}"},
            ),
            [402, 422],
        )
        tally.check(
            f"order Idempotency-Key {s!r}",
            client.post(
                f"{API}/orders",
                json={"plan": "pro", "payment_token": "tok_declined"},
                headers={**user, "Idempotency-Key": s},
            ),
            [400, 402],
        )
    assert_inert(app, client, world, tally, before)


def test_sql_injection_in_paths_queries_and_cursors_is_inert(app, client, world, tally):
    user, admin = world["user"], world["admin"]
    before = counts(app), existing_tables(app)
    for s in SQLI:
        # path segments and query values
        segment = quote(s, safe="")
        for path, headers in (
            (f"{API}/licenses/{segment}", user),
            (f"{API}/orders/{segment}", user),
            (f"{API}/admin/users/{segment}", admin),
            (f"{API}/admin/licenses/{segment}", admin),
        ):
            tally.check(f"GET {path}", client.get(path, headers=headers), [404])
        for path, params in (
            (f"{API}/admin/users", {"email": s}),
            (f"{API}/admin/users", {"plan": s[:32]}),
            (f"{API}/admin/audit-logs", {"user_id": s[:40]}),
            (f"{API}/admin/audit-logs", {"action": s}),
        ):
            listed = tally.check(
                f"GET {path} {params}", client.get(path, query_string=params, headers=admin), [200]
            )
            tally.expect(
                f"GET {path} {params} finds nothing",
                listed.get_json()["items"] == [],
                f"{len(listed.get_json()['items'])} items",
            )
        for path, headers in (
            (f"{API}/licenses", user),
            (f"{API}/orders", user),
            (f"{API}/admin/users", admin),
            (f"{API}/admin/audit-logs", admin),
        ):
            cursor = base64.urlsafe_b64encode(json.dumps([s, s]).encode()).decode().rstrip("=")
            for value in (s, cursor):
                tally.check(
                    f"GET {path} cursor {value!r}",
                    client.get(path, query_string={"cursor": value}, headers=headers),
                    [422],
                )

    assert_inert(app, client, world, tally, before)


# --- bodies: size, depth, encoding ---------------------------------------------------


def test_every_body_operation_is_described(client):
    """BODIES names a valid body for every operation that takes one: a new one fails here."""
    assert sorted(BODIES) == body_operations(client)


BODIES: dict[tuple[str, str], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("POST", f"{API}/auth/register"): lambda lic: {
        "email": "new@example.com",
        "password": PASSWORD,
    },
    ("POST", f"{API}/auth/login"): lambda lic: {"email": "ada@example.com", "password": PASSWORD},
    ("POST", f"{API}/auth/password"): lambda lic: {
        "current_password": PASSWORD,
        "new_password": PASSWORD,
    },
    ("POST", f"{API}/licenses/activate"): lambda lic: {"client_id": "box-2"},
    ("POST", f"{API}/licenses/validate"): lambda lic: {
        "token": lic["token"],
        "client_id": lic["client_id"],
    },
    ("POST", f"{API}/licenses/deactivate"): lambda lic: {
        "token": lic["token"],
        "client_id": lic["client_id"],
    },
    ("POST", f"{API}/orders"): lambda lic: {"plan": "pro", "seats": 3, "payment_token": "tok_ok"},
    ("PATCH", f"{API}/admin/licenses/{{license_id}}"): lambda lic: {"status": "suspended"},
    ("POST", f"{API}/admin/licenses/batch-status"): lambda lic: {
        "updates": [{"license_id": lic["license_id"], "status": "suspended", "version": 1}]
    },
    ("POST", f"{API}/admin/webhooks"): lambda lic: {
        "url": "http://127.0.0.1:9/hooks",
        "events": ["order.paid"],
    },
    ("PATCH", f"{API}/admin/webhooks/{{webhook_id}}"): lambda lic: {"description": "billing"},
}

BUSINESS_TABLES = ("users", "licenses", "subscriptions", "orders", "token_revocations")


def business_counts(app) -> dict[str, int]:
    return {t: n for t, n in counts(app).items() if t in BUSINESS_TABLES}


def nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("limits", ["rate limits off", "rate limits on"])
def test_deeply_nested_json_is_a_400_not_a_recursion_error(app_config, tally, limits):
    """Ten thousand levels of [ or {"a": are malformed input (400), also where the rate
    limiter's key functions read the body first; a few hundred levels are just invalid."""
    from app import create_app

    generous = dict.fromkeys(rate_limit_settings(load_config(".", env={})), "1000/minute")
    # With limits on, the key functions (per account, per token) read the body first.
    app = create_app({**app_config, **generous, "RATELIMIT_ENABLED": limits == "rate limits on"})
    client = app.test_client()
    try:
        world = build_world(client, app.test_cli_runner())
        for method, path in sorted(BODIES):
            url, headers = concrete(path, world)
            for kind in ("array", "object"):
                for depth in (10_000, 100_000):
                    tally.check(
                        f"{method} {path} {kind} {depth} deep",
                        send_json(client, method, url, nested(depth, kind), headers),
                        [400],
                        code="malformed_json",
                    )
                tally.check(
                    f"{method} {path} {kind} 300 deep",
                    send_json(client, method, url, nested(300, kind), headers),
                    [422],
                )
    finally:
        app.extensions["db"].dispose()
    tally.assert_held()


# --- query values and cursors --------------------------------------------------------


def cursor_of(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def ok_or_refused(status: int) -> bool:
    return status in (200, 422)


def test_odd_email_prefixes_are_answered_not_500(client, world, tally):
    """The admin's email-prefix filter with blank prefixes and prefixes at the edges of
    Unicode (the last code point; the one before the surrogates) is still a prefix filter."""
    admin = world["admin"]
    prefixes = [" ", "   ", "\t", "\U0010ffff", "a\U0010ffff", "\U0010ffff\U0010ffff"]
    prefixes += ["\ud7ff", "a\ud7ff", "\ufffd", "%", "_", "\x7f", "ADA", " ada"]
    for email in prefixes:
        response = tally.check(
            f"users email={email!r}",
            client.get(f"{API}/admin/users", query_string={"email": email}, headers=admin),
            [200],
        )
        if response.status_code == 200:
            emails = [u["email"] for u in response.get_json()["items"]]
            wanted = email.strip().lower()
            tally.expect(
                f"users email={email!r} prefix",
                all(e.startswith(wanted) for e in emails)
                and ("ada@example.com" in emails) == "ada@example.com".startswith(wanted),
                f"{emails} for {email!r}",
            )
    tally.assert_held()


def test_times_beyond_the_calendar_in_utc_are_422(client, world, tally):
    """since/until that parse but fall before year 1 or after 9999 once moved to UTC."""
    admin = world["admin"]
    for name, value, allowed in (
        ("since", "0001-01-01T00:00:00+14:00", [422]),
        ("until", "0001-01-01T00:00:00+23:59", [422]),
        ("since", "9999-12-31T23:59:59-14:00", [422]),
        ("until", "9999-12-31T23:59:59-23:59", [422]),
        ("since", "0001-01-01T00:00:00-14:00", [200]),  # 14:00 UTC on day one
        ("until", "9999-12-31T23:59:59+14:00", [200]),
    ):
        tally.check(
            f"audit {name}={value}",
            client.get(f"{API}/admin/audit-logs", query_string={name: value}, headers=admin),
            allowed,
        )
    tally.assert_held()


def test_forged_cursors_are_422_not_500(client, world, tally):
    """Anyone can forge a cursor: base64url JSON (as cursors once were) with lone
    surrogates (which cannot be sent to a database), naive or impossible times, wrong
    shapes; times beyond any calendar; a key of another list's shape — all invalid_cursor."""
    admin, user = world["admin"], world["user"]
    forged = [
        '"\\ud800"',
        '"a\\udfff"',
        '["2026-01-01T00:00:00+00:00", "\\ud800"]',
        '["\\ud800", "x"]',
        '["2026-01-01T00:00:00", "usr_x"]',  # naive
        '["2026-01-01", "usr_x"]',  # a date, naive
        '["0001-01-01T00:00:00+14:00", "usr_x"]',
        '["9999-12-31T23:59:59-14:00", "usr_x"]',
        '["2026-01-01T00:00:00+00:00", "usr_x", "extra"]',
        "[1, 2]",
        '{"a": 1}',
        "1e999",
    ]
    forged_plain = ["99999999999999999.usr_01M8R5HDTHPE0XRN0KDW4JSSCV", "-1.usr_x", "lic_\x00"]
    forged_plain += ["1.2.3", "usr_01M8R5HDTHPE0XRN0KDW4JSSCV.1", "", " ", "lic_" + "A" * 26 + "\n"]
    for cursor in [cursor_of(raw) for raw in forged] + forged_plain:
        for path, headers in (
            (f"{API}/licenses", user),
            (f"{API}/orders", user),
            (f"{API}/admin/users", admin),
            (f"{API}/admin/audit-logs", admin),
        ):
            tally.check(
                f"{path} cursor {cursor[:60]!r}",
                client.get(path, query_string={"cursor": cursor}, headers=headers),
                [422],
                code="invalid_cursor",
            )
    for limit in ("0", "-1", "101", "1e3", "1.5", "abc", "9" * 40, "", "\x00"):
        tally.check(
            f"licenses limit={limit!r}",
            client.get(f"{API}/licenses", query_string={"limit": limit}, headers=user),
            [422],
        )
    tally.assert_held()


# --- bodies: size, encoding, odd values ----------------------------------------------


def send_json(client, method: str, url: str, data: bytes | str, headers: dict) -> Any:
    """`data` sent as it is, labelled application/json (bodies json= could not encode)."""
    return client.open(
        url, method=method, data=data, headers=headers, content_type="application/json"
    )


def body_requests(world: dict[str, Any]) -> list[tuple[str, str, str, dict, dict]]:
    """(label, method, url, valid body, headers) for every body operation, plus activation
    by email and password (the same operation, called without a token)."""
    lic = world["license"]
    calls = []
    for (method, path), make in sorted(BODIES.items()):
        url, headers = concrete(path, world)
        calls.append((f"{method} {path}", method, url, make(lic), headers))
    calls.append(
        (
            "POST activate with credentials",
            "POST",
            f"{API}/licenses/activate",
            {"client_id": "box-3", "email": "ada@example.com", "password": PASSWORD},
            {},
        )
    )
    return calls


def nothing_stored(app, tally, before: dict[str, int]) -> None:
    """No business row was added or removed since `before`, and every check held."""
    tally.expect("nothing stored", business_counts(app) == before, str(business_counts(app)))
    tally.assert_held()


def refused_everywhere(app, client, world, tally, variants, status: int, code: str) -> None:
    """Every body operation, sent each (name, data) of `variants(body)` instead of its valid
    body, answers `status` with problem `code`, and nothing is stored."""
    before = business_counts(app)
    for label, method, url, body, headers in body_requests(world):
        for name, data in variants(body):
            response = send_json(client, method, url, data, headers)
            tally.check(f"{label} {name}", response, [status], code=code)
    nothing_stored(app, tally, before)


def test_a_two_megabyte_body_is_413_everywhere(app, client, world, tally):
    def two_megabytes(body: dict) -> Iterator[tuple[str, bytes]]:
        field_name = next(iter(body))
        yield "2 MB", json.dumps({**body, field_name: "x" * (2 * 1024 * 1024)}).encode()

    refused_everywhere(app, client, world, tally, two_megabytes, 413, "payload_too_large")


INVALID_UTF8 = [
    b"\xff\xfe",  # never valid
    b"\xc0\xaf",  # overlong "/"
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xe2\x82",  # truncated
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
]


def test_invalid_utf8_is_400_everywhere(app, client, world, tally):
    def with_invalid_utf8(body: dict) -> Iterator[tuple[str, bytes]]:
        text = json.dumps(body).encode()
        for bad in INVALID_UTF8:
            # inside the first string value, where a lenient decoder would keep it
            data = text.replace(b'": "', b'": "' + bad, 1)
            assert bad in data, body
            yield repr(bad), data

    refused_everywhere(app, client, world, tally, with_invalid_utf8, 400, "malformed_json")


def fields_of(body: dict[str, Any]) -> list[tuple[tuple, Any]]:
    """(path, value) of every leaf (list items and nested objects included)."""
    leaves = []
    for key, value in body.items():
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    leaves += [((key, i, *p), v) for p, v in fields_of(item)]
                else:
                    leaves.append(((key, i), item))
        else:
            leaves.append(((key,), value))
    return leaves


def replaced(body: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(body, list):
        return [replaced(item, rest, value) if i == head else item for i, item in enumerate(body)]
    return {**body, head: replaced(body[head], rest, value)}


# Fields that may legitimately hold these values; everything else is a 4xx.
NUL_ACCEPTED = {
    ("POST /api/v1/auth/register", "password"): [201, 422],  # opaque, hashed; 8+ characters
    # the same for a new password; once changed, the caller's token is revoked (401)
    ("POST /api/v1/auth/password", "new_password"): [200, 401, 422],
    ("POST /api/v1/licenses/validate", "token"): [200],  # valid: false, INVALID_TOKEN
    ("POST /api/v1/licenses/validate", "client_id"): [200],  # valid: false, CLIENT_MISMATCH
}
OPTIONAL = {
    ("POST /api/v1/orders", "seats"),
    ("POST /api/v1/licenses/validate", "client_id"),
    ("POST /api/v1/admin/licenses/batch-status", "version"),
    ("PATCH /api/v1/admin/webhooks/{webhook_id}", "description"),  # PATCH: null is not given
}


def test_nul_bytes_in_every_field_are_refused_and_store_nothing(app, client, world, tally):
    before = business_counts(app)
    accepted, changed = 0, False
    for label, method, url, body, headers in body_requests(world):
        for path, value in fields_of(body):
            if not isinstance(value, str):
                continue
            name = str(path[-1])
            for bad in ("\x00", value[:3] + "\x00" + value[3:], value + "\x00"):
                allowed = NUL_ACCEPTED.get((label, name), client_error)
                response = tally.check(
                    f"{label} {name}={bad!r}",
                    client.open(
                        url,
                        method=method,
                        json=replaced(body, path, bad),
                        headers={**headers, "Idempotency-Key": f"nul-{tally.tried}"},
                    ),
                    allowed,
                )
                if (label, name) == ("POST /api/v1/auth/register", "password"):
                    accepted += response.status_code == 201
                    body = {**body, "email": f"nul{tally.tried}@example.com"}
                if (label, name) == ("POST /api/v1/auth/password", "new_password"):
                    changed = changed or response.status_code == 200
    after = business_counts(app)
    tally.expect(
        "nothing stored but the accounts with odd passwords (and a password change's marker)",
        after
        == {
            **before,
            "users": before["users"] + accepted,
            "token_revocations": before["token_revocations"] + changed,
        },
        f"{before} -> {after}",
    )
    tally.assert_held()


def test_very_long_strings_are_422(app, client, world, tally):
    before = business_counts(app)
    for label, method, url, body, headers in body_requests(world):
        for path, value in fields_of(body):
            if not isinstance(value, str):
                continue
            for size in (10_000, 500_000):
                tally.check(
                    f"{label} {path[-1]} {size} chars",
                    client.open(
                        url,
                        method=method,
                        json=replaced(body, path, value[:1] + "a" * size),
                        headers={**headers, "Idempotency-Key": f"long-{tally.tried}"},
                    ),
                    [422],
                )
    nothing_stored(app, tally, before)


WRONG_TYPES = [123, -1, 1.5, True, False, [], ["a"], {}, {"a": 1}, None]
NOT_INTEGERS = ["3", "1", 2.5, True, "3 seats", 1e400]  # 3.0 is 3 (JSON has one number)


def test_wrong_types_are_422(app, client, world, tally):
    before = business_counts(app)
    for label, method, url, body, headers in body_requests(world):
        for path, value in fields_of(body):
            name = str(path[-1])
            values = WRONG_TYPES if isinstance(value, str) else [*NOT_INTEGERS, [], {}, "x"]
            for bad in values:
                if bad is None and (label, name) in OPTIONAL:
                    continue  # null is "not given" there
                tally.check(
                    f"{label} {name}={bad!r}",
                    send_json(
                        client,
                        method,
                        url,
                        json.dumps(replaced(body, path, bad)),
                        {**headers, "Idempotency-Key": f"type-{tally.tried}"},
                    ),
                    # without a token, a null credential is "no credentials": 401
                    [401, 422] if label.endswith("credentials") and bad is None else [422],
                )
        for shape in ([], [body], "body", 1, None, True):
            tally.check(
                f"{label} body={shape!r}",
                send_json(
                    client,
                    method,
                    url,
                    json.dumps(shape),
                    {**headers, "Idempotency-Key": f"shape-{tally.tried}"},
                ),
                [401, 422] if label.endswith("credentials") else [422],
            )
    nothing_stored(app, tally, before)


# --- through nginx, in front of a real gunicorn --------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def mimetype(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()


def raw_request(port: int, data: bytes, source: str = "127.0.0.1") -> RawResponse:
    """Send bytes as they are (http.client refuses what a hostile client sends); read the
    answer up to the close (every request here says Connection: close or is refused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0)) as s:
        s.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), received[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(lines[0].split()[1]), headers, body)


def get(target: str, *headers: bytes) -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: api.example.com\r\n".encode()
        + b"".join(h + b"\r\n" for h in headers)
        + b"Connection: close\r\n\r\n"
    )


def line_of(length: int) -> str:
    """A GET /healthz request target whose request line is exactly `length` bytes."""
    target = "/healthz?pad="
    return target + "a" * (length - len(f"GET {target} HTTP/1.1"))


class RawTally(Tally):
    def check_raw(self, label: str, response: RawResponse, status: int, code: str | None = None):
        """`status`; errors as a complete problem+json with `code`; never an HTML page."""
        self.tried += 1
        wrong = None
        if response.status != status:
            wrong = f"status {response.status}, expected {status}: {response.body[:200]!r}"
        elif status >= 400:
            if response.mimetype != "application/problem+json":
                wrong = f"{status} as {response.mimetype}: {response.body[:200]!r}"
            else:
                body = json.loads(response.body)
                if not {"type", "title", "status", "detail", "code"} <= body.keys():
                    wrong = f"incomplete problem {body}"
                elif (body["status"], body["code"]) != (status, code or body["code"]):
                    wrong = f"problem {body}, expected {status} {code}"
        elif response.mimetype != "application/json":
            wrong = f"{status} as {response.mimetype}"
        if wrong is None:
            self.held += 1
        else:
            self.failures.append(f"{label}: {wrong}")


@pytest.fixture
def raw_tally():
    yield from counted(RawTally())


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_behind_nginx_oversized_requests_get_problem_json_never_html(
    database_url, signing_key_file, tmp_path, raw_tally
):
    """Request lines and headers up to nginx's limits reach the app (gunicorn's own limits,
    4 KiB lines and 100 fields by default, would answer them with an HTML page); beyond,
    nginx answers 414/431/400/413 as problem+json, and its 502s and 403s too."""
    t = raw_tally
    with (
        gunicorn_server(database_url, workers=1, LICENSE_SIGNING_KEYS=signing_key_file) as base,
        nginx_in_front_of(base.removeprefix("http://"), tmp_path) as port,
    ):
        for length in (4094, 4095, 6000, 8190):  # gunicorn's default limit is 4094
            t.check_raw(f"request line {length}", raw_request(port, get(line_of(length))), 200)
        for length in (8191, 10 * 1024, 64 * 1024):
            t.check_raw(
                f"request line {length}",
                raw_request(port, get(line_of(length))),
                414,
                "uri_too_long",
            )
        fits = [
            ("one 8190-byte header", [b"X-Big: " + b"b" * 8183]),
            ("150 small headers", [b"X-H%d: v" % i for i in range(150)]),
            ("4 X-Forwarded-For of 7 KB", [b"X-Forwarded-For: " + b"1" * 7000] * 4),
            ("3 headers of 7 KB", [b"X-A%d: " % i + b"a" * 7000 for i in range(3)]),
        ]
        for label, headers in fits:
            t.check_raw(label, raw_request(port, get("/healthz", *headers)), 200)
        too_large = [
            ("one 20 KB header", [b"X-Big: " + b"b" * 20_000]),
            ("one 9000-byte cookie", [b"Cookie: c=" + b"c" * 9000]),
            ("5 headers of 7 KB", [b"X-A%d: " % i + b"a" * 7000 for i in range(5)]),
        ]
        for label, headers in too_large:
            t.check_raw(
                label, raw_request(port, get("/healthz", *headers)), 431, "headers_too_large"
            )
        malformed = [
            ("garbage request line", b"\x00\x01\x02 / HTTP/1.1\r\n\r\n"),
            ("space in a header name", b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n"),
            (
                "bad chunk size",
                b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            ),
            (
                "two lengths",
                b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                b"Content-Length: 3\r\n\r\n{}",
            ),
        ]
        for label, data in malformed:
            response = raw_request(port, data)
            t.check_raw(label, response, 400, "bad_request")
        t.check_raw(
            "HTTP/9.9",
            raw_request(port, b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n"),
            505,
            "http_version_not_supported",
        )
        t.check_raw(
            "unknown transfer coding",
            raw_request(
                port,
                b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            ),
            501,
            "not_implemented",
        )
        big = (
            b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2097152\r\nConnection: close\r\n\r\n" + b"x" * 65536
        )
        t.check_raw("2 MB body", raw_request(port, big), 413, "payload_too_large")
        t.check_raw(
            "/metrics from elsewhere",
            raw_request(port, get("/metrics"), source="127.0.0.2"),
            403,
            "forbidden",
        )
        # The app's own problems pass through nginx untouched.
        t.check_raw(
            "nginx's error pages are internal",
            raw_request(port, get("/_problems/bad_request")),
            404,
            "not_found",
        )
        t.check_raw("the app's 404", raw_request(port, get("/api/v1/nope")), 404, "not_found")
        register = json.dumps({"email": "n@example.com", "password": PASSWORD}).encode()
        t.check_raw(
            "the app's 422",
            raw_request(
                port,
                b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (len(register) - 2)
                + register[:-2]
                + b"}}",
            ),
            400,
            "malformed_json",
        )
    dead = free_port()  # nothing listens there: nginx's own 502
    (tmp_path / "dead").mkdir()
    with nginx_in_front_of(f"127.0.0.1:{dead}", tmp_path / "dead") as port:
        t.check_raw("upstream down", raw_request(port, get("/healthz")), 502, "bad_gateway")
    # An upstream that accepts and never answers: nginx's own 504.
    (tmp_path / "mute").mkdir()
    with socket.create_server(("127.0.0.1", 0)) as mute:
        upstream = f"127.0.0.1:{mute.getsockname()[1]}"
        # 500 ms: nginx must give its 504 before wait_for_http (1 s per try) gives up on it.
        settings = {"proxy_read_timeout": "500ms"}
        with nginx_in_front_of(upstream, tmp_path / "mute", settings) as port:
            t.check_raw("upstream mute", raw_request(port, get("/healthz")), 504, "gateway_timeout")
    t.assert_held()


@dataclass
class SlowClient:
    """A client that sends its request in pieces with a gap between them, and notes when
    the server hangs up on it."""

    port: int
    pieces: list[bytes]
    gap: float
    sent: int = 0
    cut: bool = False
    answer: bytes = b""
    started: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            self._send_slowly()
        finally:
            self.started.set()

    def _send_slowly(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for piece in self.pieces:
                try:
                    s.sendall(piece)
                except OSError:
                    self.cut = True
                    break
                self.sent += 1
                if self.sent == 1:
                    self.started.set()
                readable, _, _ = wait_readable([s], [], [], self.gap)
                if readable:  # the server spoke or hung up before the request was complete
                    with contextlib.suppress(OSError):
                        self.answer = s.recv(65536)
                    self.cut = True
                    break

    @property
    def complete(self) -> bool:
        return self.sent == len(self.pieces)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_behind_nginx_slow_clients_are_cut_off_and_others_served(
    database_url, signing_key_file, tmp_path, tally
):
    """Slowloris (headers a byte at a time) and slow bodies are disconnected by nginx's
    timeouts before their requests complete, while a normal client is served meanwhile —
    with a single gunicorn worker, which any one of them would otherwise hold."""
    timeouts = {"client_header_timeout": "2s", "client_body_timeout": "1s"}
    header = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: " + b"s" * 400 + b"\r\n\r\n"
    )  # a byte every 0.1 s: 40 s to send, were it not cut off
    body_head = (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 40\r\n\r\n"
    )
    with (
        gunicorn_server(database_url, workers=1, LICENSE_SIGNING_KEYS=signing_key_file) as base,
        nginx_in_front_of(base.removeprefix("http://"), tmp_path, timeouts) as port,
    ):
        slow = [SlowClient(port, [bytes([b]) for b in header], gap=0.1) for _ in range(4)]
        # the body, a byte at a time, with gaps longer than client_body_timeout
        slow += [SlowClient(port, [body_head] + [b" "] * 40, gap=1.6) for _ in range(4)]
        threads = [threading.Thread(target=c.run, daemon=True) for c in slow]
        for thread in threads:
            thread.start()
        for client in slow:
            client.started.wait(30)
        # Meanwhile: every slow client is connected and mid-request, and others are served.
        still_open = sum(not c.cut for c in slow)
        for i in range(5):
            status, body, _ = nginx_call(port, "GET", "/healthz")
            tally.expect(f"normal request {i}", status == 200, f"{status} {body[:200]!r}")
        tally.expect(
            "served while the slow clients were connected",
            still_open == len(slow) and sum(not c.cut for c in slow) == len(slow),
            f"{still_open} of {len(slow)} slow clients were still connected before, "
            f"{sum(not c.cut for c in slow)} after",
        )
        for thread in threads:
            thread.join(120)
        for i, client in enumerate(slow):
            kind = "slowloris" if i < 4 else "slow body"
            tally.expect(
                f"{kind} {i} cut off before its request was complete",
                client.cut and not client.complete,
                f"sent {client.sent} of {len(client.pieces)} pieces, cut={client.cut}",
            )
            # nginx hangs up on a timed-out client without an answer (it sends no 408)
            tally.expect(
                f"{kind} {i} was hung up on, not answered",
                client.answer == b"",
                repr(client.answer[:200]),
            )
        status, _, _ = nginx_call(port, "GET", "/healthz")
        tally.expect("served afterwards", status == 200, str(status))
    tally.assert_held()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    "req",
    [
        ("post", "/api/v1/auth/login", {"email": "a\x00@x.com", "password": "x"}),
        (
            "post",
            "/api/v1/licenses/activate",
            {"client_id": "c1", "email": "a\x00", "password": "x"},
        ),
        ("get", "/api/v1/licenses/%00", None),
        ("delete", "/api/v1/licenses/%00", None),
        (
            "get",
            "/api/v1/licenses?cursor=Ilx1MDAwMCI",
            None,
        ),  # base64url of the JSON string "\u0000"
    ],
)
def test_nul_bytes_are_4xx_not_500(client, backend, req):
    """(an independent review: NUL characters reached PostgreSQL and answered 500)"""
    h = sign_up(client).headers
    method, path, body = req
    r = getattr(client, method)(path, json=body, headers=h if body is None else {})
    assert r.status_code < 500, r.get_data(as_text=True)
