"""The authorization matrix: every route by every kind of caller, with the status each gets.

The rows come from the app's route table (`app.url_map`: every rule and method, without
HEAD, OPTIONS and static), so a new route without an entry in EXPECTED fails the test
with its name. The callers:

- anonymous: no Authorization header;
- user_a: owns the license and the order the routes are asked about;
- user_b: another user: A's license and order are 404 to B ("not found or not yours");
- admin: may read any license or order (README: Licenses, Orders), and is the only one on /admin;
- expired, revoked (after /auth/logout), tampered (one character of the signature
  flipped), alg_none (header {"alg": "none"}, A's claims, no signature), forged (A's
  signature on claims changed to make A an admin, or B on a refresh token), and
  wrong_type (A's refresh token where an access token is wanted; on /auth/refresh, A's
  access token): all 401 problem+json wherever a token is needed — and public routes
  answer them as they answer anybody.

Each route's row runs against a world of its own (three fresh accounts, A's license, A's
order), so one row's logout or cancel cannot change another's answers. The test prints
`authz: N cells, M expectations held` and, when SOAK_REPORT names a file, appends
{"category": "authz", "tried": N, "held": M} to it.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from flask_jwt_extended import create_access_token, create_refresh_token

from tests.helpers import (
    API,
    PASSWORD,
    Account,
    b64url,
    bearer,
    logged_in,
    sign_up,
    soak_report,
    tampered,
)

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


GOOD = ("user_a", "user_b", "admin")
BAD_TOKENS = ("expired", "revoked", "tampered", "alg_none", "forged", "wrong_type")
PRINCIPALS = ("anonymous", *BAD_TOKENS, *GOOD)  # the owner, A, comes last in each row

# The problem code each refused caller gets where a token is required.
REFUSAL_CODES = {
    "anonymous": "unauthorized",
    "expired": "token_expired",
    "revoked": "token_revoked",
    "tampered": "invalid_token",
    "alg_none": "invalid_token",
    "forged": "invalid_token",
    "wrong_type": "invalid_token",
}


# --- the expectations ----------------------------------------------------------------


def public(status: int) -> dict[str, int]:
    """Anybody, with any Authorization header or none, gets `status`."""
    return dict.fromkeys(PRINCIPALS, status)


def signed_in(owner: int, other: int, admin: int) -> dict[str, int]:
    """A valid token is needed; A, B and the admin get these statuses."""
    refused = dict.fromkeys(("anonymous", *BAD_TOKENS), 401)
    return {**refused, "user_a": owner, "user_b": other, "admin": admin}


def admin_only(status: int) -> dict[str, int]:
    return signed_in(owner=403, other=403, admin=status)


EXPECTED: dict[tuple[str, str], dict[str, int]] = {
    # operations and documents
    ("GET", "/openapi.json"): public(200),
    ("GET", "/metrics"): public(200),  # nginx lets only 127.0.0.1 scrape it
    ("GET", "/healthz"): public(200),
    ("GET", "/readyz"): public(200),
    ("GET", "/.well-known/jwks.json"): public(200),
    ("GET", f"{API}/plans"): public(200),
    # auth
    ("POST", f"{API}/auth/register"): public(201),
    ("POST", f"{API}/auth/login"): public(200),
    ("POST", f"{API}/auth/refresh"): signed_in(200, 200, 200),  # with each one's refresh token
    ("POST", f"{API}/auth/logout"): signed_in(204, 204, 204),
    ("GET", f"{API}/auth/me"): signed_in(200, 200, 200),
    ("POST", f"{API}/auth/password"): signed_in(200, 200, 200),  # each their own
    # licenses
    ("POST", f"{API}/licenses/activate"): signed_in(201, 201, 201),  # anonymous: no credentials
    ("POST", f"{API}/licenses/validate"): public(200),
    # the app's own call: its license token and client id, whatever the Authorization header
    ("POST", f"{API}/licenses/deactivate"): public(200),
    ("GET", f"{API}/licenses"): signed_in(200, 200, 200),  # each their own
    ("GET", f"{API}/licenses/<license_id>"): signed_in(200, 404, 200),
    ("DELETE", f"{API}/licenses/<license_id>"): signed_in(200, 404, 404),  # the owner only
    # orders
    ("POST", f"{API}/orders"): signed_in(201, 201, 201),
    ("GET", f"{API}/orders"): signed_in(200, 200, 200),
    ("GET", f"{API}/orders/<order_id>"): signed_in(200, 404, 200),
    ("POST", f"{API}/orders/<order_id>/cancel"): signed_in(200, 404, 200),
    ("GET", f"{API}/me/dashboard"): signed_in(200, 200, 200),
    # admin
    ("GET", f"{API}/admin/stats/users"): admin_only(200),
    ("GET", f"{API}/admin/stats/licenses"): admin_only(200),
    ("GET", f"{API}/admin/users"): admin_only(200),
    ("GET", f"{API}/admin/users/<user_id>"): admin_only(200),
    ("POST", f"{API}/admin/users/<user_id>/unlock"): admin_only(200),
    ("GET", f"{API}/admin/audit-logs"): admin_only(200),
    ("GET", f"{API}/admin/licenses/<license_id>"): admin_only(200),
    ("PATCH", f"{API}/admin/licenses/<license_id>"): admin_only(200),
    ("POST", f"{API}/admin/licenses/batch-status"): admin_only(200),
    # webhooks (admins only)
    ("POST", f"{API}/admin/webhooks"): admin_only(201),
    ("GET", f"{API}/admin/webhooks"): admin_only(200),
    ("GET", f"{API}/admin/webhooks/<webhook_id>"): admin_only(200),
    ("PATCH", f"{API}/admin/webhooks/<webhook_id>"): admin_only(200),
    ("DELETE", f"{API}/admin/webhooks/<webhook_id>"): admin_only(204),
    ("POST", f"{API}/admin/webhooks/<webhook_id>/rotate-secret"): admin_only(200),
    ("GET", f"{API}/admin/webhooks/<webhook_id>/deliveries"): admin_only(200),
    ("POST", f"{API}/admin/webhooks/<webhook_id>/deliveries/<delivery_id>/redeliver"): admin_only(
        202
    ),
    ("POST", f"{API}/admin/webhooks/<webhook_id>/test"): admin_only(202),
}

# Routes whose legitimate callers present their refresh token rather than an access token.
REFRESH_ROUTES = {("POST", f"{API}/auth/refresh")}


def route_table(app) -> list[tuple[str, str]]:
    """Every (method, rule) the app serves, without HEAD, OPTIONS and static files, and
    without the web console's pages: they take no token, only a browser session (their
    matrix, also built from the route table, is in tests/test_console.py)."""
    rows = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("console_"):
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            rows.add((method, rule.rule))
    return sorted(rows, key=lambda r: (r[1], r[0]))


def coverage_problems(app) -> list[str]:
    """What is wrong between the route table and EXPECTED/REQUESTS, one line per route."""
    routes = set(route_table(app))
    problems = [
        f"{method} {rule} has no entry in EXPECTED: say what each caller gets"
        for method, rule in sorted(routes - EXPECTED.keys())
    ]
    problems += [
        f"{method} {rule} has no entry in REQUESTS: say how to call it"
        for method, rule in sorted(routes - REQUESTS.keys())
    ]
    problems += [
        f"{method} {rule} is in {name} but the app has no such route"
        for name, table in (("EXPECTED", EXPECTED), ("REQUESTS", REQUESTS))
        for method, rule in sorted(table.keys() - routes)
    ]
    return problems


# --- the world each row runs against -------------------------------------------------


@dataclass
class World:
    a: Account
    b: Account
    admin: Account
    license_id: str
    license_token: str
    license_version: int
    order_id: str
    webhook_id: str = ""
    delivery_id: str = ""  # the order's order.paid, for the webhook
    tokens: dict[str, str] = field(default_factory=dict)  # principal -> access token
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # principal -> refresh token
    counter: itertools.count = field(default_factory=itertools.count)

    def fresh(self, prefix: str) -> str:
        return f"{prefix}-{next(self.counter)}-{uuid.uuid4().hex[:8]}"


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def alg_none(token: str) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{token.split('.')[1]}."


def forged(token: str, **changes: Any) -> str:
    """The same header and signature over changed claims."""
    header, _payload, signature = token.split(".")
    claims = {**claims_of(token), **changes}
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


def make_world(app, client, runner, tag: str) -> World:
    a = sign_up(client, f"a-{tag}@example.com")
    b = sign_up(client, f"b-{tag}@example.com")
    admin_email = f"admin-{tag}@example.com"
    result = runner.invoke(
        args=["users", "create-admin", admin_email, "--password-stdin"], input=PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output
    admin_id = re.search(r"\((usr_\w+)\)", result.output).group(1)  # "created admin … (usr_…)"
    admin = logged_in(client, admin_email, admin_id)

    app.config["WEBHOOKS_ALLOW_PRIVATE"] = True  # the endpoint below is on loopback
    webhook = client.post(
        f"{API}/admin/webhooks",
        json={"url": "http://127.0.0.1:9/hooks", "events": ["order.paid"]},
        headers=bearer(admin.access),
    )
    assert webhook.status_code == 201, webhook.get_json()
    webhook_id = webhook.get_json()["webhook_id"]
    activated = client.post(
        f"{API}/licenses/activate", json={"client_id": f"dev-{tag}"}, headers=bearer(a.access)
    )
    assert activated.status_code == 201, activated.get_json()
    ordered = client.post(
        f"{API}/orders",
        json={"plan": "pro", "seats": 3, "payment_token": "tok_ok"},
        headers={**bearer(a.access), "Idempotency-Key": f"world-{tag}"},
    )
    assert ordered.status_code == 201, ordered.get_json()
    license_id = activated.get_json()["license_id"]
    # The order's subscription extended the license: its version moved on.
    version = client.get(f"{API}/licenses/{license_id}", headers=bearer(a.access)).get_json()
    world = World(
        a,
        b,
        admin,
        license_id,
        activated.get_json()["token"],
        version["version"],
        ordered.get_json()["order_id"],
        webhook_id,
        client.get(
            f"{API}/admin/webhooks/{webhook_id}/deliveries", headers=bearer(admin.access)
        ).get_json()["items"][0]["delivery_id"],
    )

    # A's tokens gone bad, each in its own way.
    revoked = logged_in(client, a.email, a.user_id)
    assert client.post(f"{API}/auth/logout", headers=bearer(revoked.access)).status_code == 204
    with app.app_context():
        claims = claims_of(a.access)
        expired_access = create_access_token(
            identity=a.user_id,
            additional_claims={"role": claims["role"], "fam": claims["fam"]},
            expires_delta=timedelta(seconds=-60),
        )
        expired_refresh = create_refresh_token(
            identity=a.user_id,
            additional_claims={"fam": claims["fam"]},
            expires_delta=timedelta(seconds=-60),
        )
    world.tokens = {
        "user_a": a.access,
        "user_b": b.access,
        "admin": admin.access,
        "expired": expired_access,
        "revoked": revoked.access,
        "tampered": tampered(a.access),
        "alg_none": alg_none(a.access),
        "forged": forged(a.access, role="admin"),
        "wrong_type": a.refresh,
    }
    world.refresh_tokens = {
        "user_a": a.refresh,
        "user_b": b.refresh,
        "admin": admin.refresh,
        "expired": expired_refresh,
        "revoked": revoked.refresh,
        "tampered": tampered(a.refresh),
        "alg_none": alg_none(a.refresh),
        "forged": forged(a.refresh, sub=b.user_id),
        "wrong_type": a.access,
    }
    return world


# --- how to call each route ----------------------------------------------------------


@dataclass
class Call:
    path: str
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # For routes about one of A's resources: the same call with an id that does not exist,
    # whose 404 must look exactly like the one B gets for A's (never leak existence).
    missing_path: str | None = None


# Each entry is called with the world and the route's rule (`/api/v1/licenses/<license_id>`).
Build = Callable[[World, str], Call]


def no_body(_w: World, rule: str) -> Call:
    return Call(rule)


def with_json(make: Callable[[World], Any], **headers: Callable[[World], str]) -> Build:
    """A call with the JSON body `make(world)` (and headers made from the world)."""
    return lambda w, rule: Call(rule, make(w), {k: v(w) for k, v in headers.items()})


def about(attr: str, **extra: Any) -> Build:
    """A call on one of A's resources (`attr` of the world), with its missing twin."""
    prefix = {"license_id": "lic_", "order_id": "ord_", "user_id": "usr_", "webhook_id": "whk_"}

    def build(w: World, template: str) -> Call:
        name = template[template.index("<") + 1 : template.index(">")]
        value = w.a.user_id if attr == "user_id" else getattr(w, attr)
        ghost = prefix[name] + "01" + "0" * 24
        made = extra.get("make", lambda w: {})(w)
        return Call(
            template.replace(f"<{name}>", value),
            missing_path=template.replace(f"<{name}>", ghost),
            **made,
        )

    return build


def redeliver(w: World, rule: str) -> Call:
    return Call(rule.replace("<webhook_id>", w.webhook_id).replace("<delivery_id>", w.delivery_id))


REQUESTS: dict[tuple[str, str], Build] = {
    ("GET", "/openapi.json"): no_body,
    ("GET", "/metrics"): no_body,
    ("GET", "/healthz"): no_body,
    ("GET", "/readyz"): no_body,
    ("GET", "/.well-known/jwks.json"): no_body,
    ("GET", f"{API}/plans"): no_body,
    ("POST", f"{API}/auth/register"): with_json(
        lambda w: {"email": w.fresh("new") + "@example.com", "password": PASSWORD}
    ),
    ("POST", f"{API}/auth/login"): with_json(lambda w: {"email": w.a.email, "password": PASSWORD}),
    ("POST", f"{API}/auth/refresh"): no_body,
    ("POST", f"{API}/auth/logout"): no_body,
    ("GET", f"{API}/auth/me"): no_body,
    ("POST", f"{API}/auth/password"): with_json(
        lambda w: {"current_password": PASSWORD, "new_password": PASSWORD}
    ),
    ("POST", f"{API}/licenses/activate"): with_json(lambda w: {"client_id": w.fresh("client")}),
    ("POST", f"{API}/licenses/validate"): with_json(lambda w: {"token": w.license_token}),
    ("POST", f"{API}/licenses/deactivate"): with_json(
        lambda w: {"token": w.license_token, "client_id": claims_of(w.license_token)["client_id"]}
    ),
    ("GET", f"{API}/licenses"): no_body,
    ("GET", f"{API}/licenses/<license_id>"): about("license_id"),
    ("DELETE", f"{API}/licenses/<license_id>"): about("license_id"),
    ("POST", f"{API}/orders"): with_json(
        lambda w: {"plan": "pro", "seats": 3, "payment_token": "tok_ok"},
        **{"Idempotency-Key": lambda w: w.fresh("key")},
    ),
    ("GET", f"{API}/orders"): no_body,
    ("GET", f"{API}/orders/<order_id>"): about("order_id"),
    ("POST", f"{API}/orders/<order_id>/cancel"): about("order_id"),
    ("GET", f"{API}/me/dashboard"): no_body,
    ("GET", f"{API}/admin/stats/users"): no_body,
    ("GET", f"{API}/admin/stats/licenses"): no_body,
    ("GET", f"{API}/admin/users"): no_body,
    ("GET", f"{API}/admin/users/<user_id>"): about("user_id"),
    ("POST", f"{API}/admin/users/<user_id>/unlock"): about("user_id"),
    ("GET", f"{API}/admin/audit-logs"): no_body,
    ("GET", f"{API}/admin/licenses/<license_id>"): about("license_id"),
    ("PATCH", f"{API}/admin/licenses/<license_id>"): about(
        "license_id",
        make=lambda w: {
            "json": {"status": "suspended"},
            "headers": {"If-Match": f'"{w.license_version}"'},
        },
    ),
    ("POST", f"{API}/admin/licenses/batch-status"): with_json(
        lambda w: {"updates": [{"license_id": w.license_id, "status": "suspended"}]}
    ),
    ("POST", f"{API}/admin/webhooks"): with_json(
        lambda w: {"url": "http://127.0.0.1:9/new", "events": ["order.paid"]}
    ),
    ("GET", f"{API}/admin/webhooks"): no_body,
    ("GET", f"{API}/admin/webhooks/<webhook_id>"): about("webhook_id"),
    ("PATCH", f"{API}/admin/webhooks/<webhook_id>"): about(
        "webhook_id", make=lambda w: {"json": {"enabled": False}}
    ),
    ("DELETE", f"{API}/admin/webhooks/<webhook_id>"): about("webhook_id"),
    ("POST", f"{API}/admin/webhooks/<webhook_id>/rotate-secret"): about("webhook_id"),
    ("GET", f"{API}/admin/webhooks/<webhook_id>/deliveries"): about("webhook_id"),
    ("POST", f"{API}/admin/webhooks/<webhook_id>/deliveries/<delivery_id>/redeliver"): redeliver,
    ("POST", f"{API}/admin/webhooks/<webhook_id>/test"): about("webhook_id"),
}


# --- checking one cell ---------------------------------------------------------------


def token_for(world: World, route: tuple[str, str], principal: str) -> str | None:
    if principal == "anonymous":
        return None
    if route in REFRESH_ROUTES:
        return world.refresh_tokens[principal]
    return world.tokens[principal]


def check_cell(client, world: World, route: tuple[str, str], principal: str) -> str | None:
    """None when the cell holds, else what went wrong."""
    method, rule = route
    expected = EXPECTED[route][principal]
    call = REQUESTS[route](world, rule)
    headers = {**call.headers, **bearer(token_for(world, route, principal))}
    response = client.open(call.path, method=method, json=call.json, headers=headers)
    text = response.get_data(as_text=True)
    if response.status_code != expected:
        return f"got {response.status_code}, expected {expected}: {text[:300]}"
    if expected < 400:
        return None
    if response.mimetype != "application/problem+json":
        return f"{expected} as {response.mimetype}, not application/problem+json"
    body = response.get_json()
    if not {"type", "title", "status", "detail", "code"} <= body.keys() or body["status"] != (
        expected
    ):
        return f"not a complete problem: {body}"
    wanted_code = {401: REFUSAL_CODES.get(principal), 403: "admin_required"}.get(expected)
    if wanted_code and body["code"] != wanted_code:
        return f"code {body['code']!r}, expected {wanted_code!r}"
    if expected == 404 and call.missing_path is not None:
        ghost = client.open(call.missing_path, method=method, json=call.json, headers=headers)
        if (ghost.status_code, ghost.get_json()) != (404, body):
            return f"404 differs from a missing id's ({ghost.get_json()}): it leaks existence"
    return None


def report(tried: int, held: int) -> None:
    print(f"authz: {tried} cells, {held} expectations held")
    soak_report("authz", tried, held)


# --- the tests -----------------------------------------------------------------------


def test_every_route_has_an_entry(app):
    problems = coverage_problems(app)
    assert not problems, "\n".join(problems)


def test_a_route_without_an_entry_is_named(app):
    """The coverage check itself can fail: a route nobody described is reported by name."""

    @app.delete("/api/v1/_new/<thing_id>")
    def _new(thing_id):  # pragma: no cover - never called
        return ""

    assert coverage_problems(app) == [
        "DELETE /api/v1/_new/<thing_id> has no entry in EXPECTED: say what each caller gets",
        "DELETE /api/v1/_new/<thing_id> has no entry in REQUESTS: say how to call it",
    ]


def test_authorization_matrix(app, client, runner):
    routes = route_table(app)
    problems = coverage_problems(app)
    assert not problems, "\n".join(problems)
    failures: list[str] = []
    tried = held = 0
    for row, route in enumerate(routes):
        world = make_world(app, client, runner, tag=f"r{row}")
        for principal in PRINCIPALS:
            tried += 1
            wrong = check_cell(client, world, route, principal)
            if wrong is None:
                held += 1
            else:
                failures.append(f"{route[0]} {route[1]} as {principal}: {wrong}")
    report(tried, held)
    assert len(routes) >= 29  # the table did not shrink by accident
    assert not failures, f"{len(failures)} of {tried} cells failed:\n" + "\n".join(failures)
