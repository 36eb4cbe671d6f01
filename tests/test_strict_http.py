"""Strict JSON over the wire, token answers nobody caches, bounded metrics, unforgeable logs
(issue 14 items 3, 8, 9 and 10)."""

from __future__ import annotations

import json
import logging
import random
import shlex
import string
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from app.auth.models import User
from app.http.observability import JsonFormatter, TextFormatter
from app.kernel.db import get_session
from app.kernel.ownership import OPERATOR, acting_as
from app.orders.payments import SandboxGateway
from tests.helpers import API, PASSWORD, assert_problem, bearer, sign_up


def user_count(app) -> int:
    with app.app_context(), acting_as(OPERATOR):
        return get_session().scalar(select(func.count()).select_from(User))


# --- item 8: strict JSON -------------------------------------------------------------


def test_duplicate_member_names_are_malformed_json(app, client, runner):
    headers = {**sign_up(client).headers, "Content-Type": "application/json"}
    runner.invoke(
        args=["users", "create-admin", "root@example.com", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    root = client.post(
        f"{API}/auth/login", json={"email": "root@example.com", "password": PASSWORD}
    ).get_json()
    admin = {**bearer(root["access_token"]), "Content-Type": "application/json"}
    order = client.post(
        f"{API}/orders",
        data=b'{"plan": "pro", "seats": 1, "seats": 50, "payment_token": "tok_ok"}',
        headers={**headers, "Idempotency-Key": "dup-1"},
    )
    assert_problem(order, 400, "malformed_json")
    assert SandboxGateway(app.config["SANDBOX_LEDGER"]).entries() == []  # nothing charged
    nested = client.post(
        f"{API}/admin/licenses/batch-status",
        data=b'{"updates": [{"license_id": "lic_x", "status": "active", "status": "revoked"}]}',
        headers=admin,
    )
    assert_problem(nested, 400, "malformed_json")
    register = client.post(
        f"{API}/auth/register",
        data=b'{"email": "a@example.com", "password": "p1p1p1p1p1", "email": "b@example.com"}',
        headers={"Content-Type": "application/json"},
    )
    assert_problem(register, 400, "malformed_json")
    assert user_count(app) == 2
    # The same members once each are fine.
    fine = client.post(
        f"{API}/orders",
        data=b'{"plan": "pro", "seats": 2, "payment_token": "tok_ok"}',
        headers={**headers, "Idempotency-Key": "dup-2"},
    )
    assert fine.status_code == 201, fine.get_json()
    assert fine.get_json()["seats"] == 2


NOT_JSON = [
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "text/json",
    "application/jsonx",
    "application/javascript",
    None,  # no Content-Type at all
]


@pytest.mark.parametrize("content_type", NOT_JSON)
def test_bodies_that_are_not_sent_as_json_are_415(app, client, content_type):
    """What a cross-site page can post without a CORS preflight is never parsed as JSON."""
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"email": "csrf@example.com", "password": PASSWORD})
    for path in (f"{API}/auth/register", f"{API}/auth/login", f"{API}/licenses/validate"):
        response = client.post(path, data=body, headers=headers)
        body_out = assert_problem(response, 415, "unsupported_media_type")
        assert body_out["title"] == "Unsupported Media Type"
        assert "Content-Type: application/json" in body_out["detail"]
    assert user_count(app) == 0


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/vnd.x+json"],
)
def test_json_and_plus_json_are_accepted(client, content_type):
    body = json.dumps({"email": "ok@example.com", "password": PASSWORD})
    response = client.post(
        f"{API}/auth/register", data=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 201, response.get_json()


def test_the_openapi_document_declares_415_for_every_body(client):
    spec = client.get("/openapi.json").get_json()
    bodies = [
        (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "requestBody" in op
    ]
    assert len(bodies) >= 7
    for path, method, op in bodies:
        assert "application/problem+json" in op["responses"]["415"]["content"], (path, method)


# --- item 9: token answers are not cacheable -----------------------------------------


def test_answers_carrying_tokens_are_no_store(client):
    client.post(f"{API}/auth/register", json={"email": "ada@example.com", "password": PASSWORD})
    login = client.post(
        f"{API}/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
    )
    refresh = client.post(f"{API}/auth/refresh", headers=bearer(login.get_json()["refresh_token"]))
    access = refresh.get_json()["access_token"]
    created = client.post(
        f"{API}/licenses/activate", json={"client_id": "box"}, headers=bearer(access)
    )
    again = client.post(
        f"{API}/licenses/activate",
        json={"client_id": "box", "email": "ada@example.com", "password": PASSWORD},
    )
    for name, response, status in (
        ("login", login, 200),
        ("refresh", refresh, 200),
        ("activate", created, 201),
        ("activate with credentials", again, 200),
    ):
        assert response.status_code == status, (name, response.get_json())
        assert response.headers["Cache-Control"] == "no-store", name
        assert response.headers["Pragma"] == "no-cache", name


# --- item 3: bounded metrics ---------------------------------------------------------


def test_random_methods_do_not_grow_the_metrics(client):
    for _ in range(20):  # the closed sets' series exist already
        client.open("/healthz", method="BREW")
        client.open("/no/such/path", method="BREW")
    before = len(client.get("/metrics").get_data())
    rng = random.Random(14)
    for i in range(1000):
        method = "".join(rng.choice(string.ascii_uppercase) for _ in range(12))
        path = "/healthz" if i % 2 else f"/nothing/{i}"
        assert client.open(path, method=method).status_code in (404, 405)
    text = client.get("/metrics").get_data(as_text=True)
    assert len(text.encode()) - before < 4096, len(text.encode()) - before
    methods = {
        line.split('method="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("http_requests_total{")
    }
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    routes = {
        line.split('route="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("http_requests_total{")
    }
    assert not any(r.startswith("/nothing") for r in routes)


# --- item 10: logs cannot be forged --------------------------------------------------


FORGED = "/api/v1/x\n2026-01-01 00:00:00,000 INFO app.access: POST /api/v1/admin 200\r\x1b[2K\u2028"


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_path_with_line_breaks_writes_one_log_line(client, caplog, formatter):
    caplog.set_level(logging.INFO, logger="app.access")
    client.get(quote(FORGED))  # as sent on the wire: %0A, %0D, %1B, %E2%80%A8
    client.get("/healthz", headers={"X-Request-ID": "ok"})
    [record] = [
        r for r in caplog.records if r.name == "app.access" and r.fields["path"] != "/healthz"
    ]
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u2028" not in line
    if isinstance(formatter, JsonFormatter):
        assert json.loads(line)["path"] == FORGED  # all of it, escaped by JSON
    else:
        assert 'path="/api/v1/x\\\\n2026-01-01' in line  # quoted, its backslashes doubled


def test_text_log_messages_and_tracebacks_cannot_start_a_line():
    formatter = TextFormatter()
    try:
        raise ValueError("bad\nFAKE 2026 INFO app: injected")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "app", logging.ERROR, __file__, 1, "user said %s", ("hi\nFAKE LINE",), sys.exc_info()
        )
    lines = formatter.format(record).splitlines()
    assert lines[0].endswith("user said hi\\nFAKE LINE")
    assert all(line.startswith("    ") for line in lines[1:])  # the traceback, indented


# --- found by the outside test --------------------------------------------------------


def test_the_openapi_document_never_names_a_clients_host(app):
    """APIFlask filled `servers` from the first request's Host and cached it for every later
    client: a client sending `Host: evil.example` first made generated clients and doc
    viewers talk to that host."""
    first = app.test_client().get("/openapi.json", headers={"Host": "evil.example"})
    later = app.test_client().get("/openapi.json", headers={"Host": "api.vendor.example"})
    for response in (first, later):
        assert response.status_code == 200
        assert "evil.example" not in response.get_data(as_text=True)
        assert response.get_json().get("servers", [{"url": "/"}]) == [{"url": "/"}]


def test_every_api_answer_is_no_store(client):
    """Tokens, verdicts and personal data: no API answer may be kept by a cache."""
    client.post(f"{API}/auth/register", json={"email": "ada@example.com", "password": PASSWORD})
    login = client.post(
        f"{API}/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
    ).get_json()
    headers = bearer(login["access_token"])
    token = client.post(
        f"{API}/licenses/activate", json={"client_id": "box"}, headers=headers
    ).get_json()["token"]
    for response in (
        client.post(f"{API}/licenses/validate", json={"token": token}),
        client.get(f"{API}/auth/me", headers=headers),
        client.get(f"{API}/licenses", headers=headers),
        client.get(f"{API}/me/dashboard", headers=headers),
        client.get(f"{API}/orders", headers=headers),
        client.get(f"{API}/auth/me"),  # a 401 problem too
    ):
        assert response.headers.get("Cache-Control") == "no-store", response.request.path
    # The public documents stay cacheable.
    assert "max-age" in client.get("/.well-known/jwks.json").headers["Cache-Control"]


def test_text_log_values_cannot_pose_as_other_fields(client, caplog):
    caplog.set_level(logging.INFO, logger="app.access")
    client.get(quote("/api/v1/x status=200 duration_ms=1 ip=6.6.6.6 user=usr_admin"))
    [record] = [r for r in caplog.records if r.name == "app.access"]
    line = TextFormatter().format(record)
    # Read back as a log shipper would (shell-style quoting): the path is one field.
    fields = dict(
        token.split("=", 1) for token in shlex.split(line.split(": ", 1)[1]) if "=" in token
    )
    assert fields["path"] == "/api/v1/x status=200 duration_ms=1 ip=6.6.6.6 user=usr_admin"
    assert (fields["status"], fields["ip"]) == ("404", "127.0.0.1"), line
