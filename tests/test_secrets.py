"""Secrets hygiene: no password, password hash, token or signing key in logs, responses or
error bodies.

A full flow (register, login, refresh, activation by token and by password, validation,
orders, admin reads and writes, logout, and failures: wrong passwords, bad tokens,
validation errors, oversized and malformed bodies) runs once in process, with a handler at
DEBUG on the root logger, and once against a real gunicorn logging at DEBUG. Then every
log line, response body and response header is searched for the passwords used, argon2
hashes, every token issued or presented (and its signature), the license signing key (PEM
body, raw private bytes) and SECRET_KEY / JWT_SECRET_KEY. A token may appear in exactly
one place: the body of the response that issued it.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization

from app import create_app
from app.http.observability import JsonFormatter, TextFormatter
from tests.helpers import (
    b64url,
    bearer,
    gunicorn_server,
    project_env,
    run_flask,
    tampered,
)

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

API = "/api/v1"


@dataclass
class Secrets:
    """Everything that must not leak, by name, and where tokens may appear."""

    passwords: dict[str, str] = field(
        default_factory=lambda: {
            "ada": "ada-" + secrets.token_urlsafe(12),
            "bob": "bob-" + secrets.token_urlsafe(12),
            "root": "root-" + secrets.token_urlsafe(12),
            "wrong": "wrong-" + secrets.token_urlsafe(12),
            "too short": "s" + secrets.token_hex(2),
        }
    )
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(40))
    jwt_secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(40))
    # token -> the responses that issued it (none for tokens the test made up)
    tokens: dict[str, set[int]] = field(default_factory=dict)

    def issued(self, token: str, response_index: int | None) -> None:
        issuers = self.tokens.setdefault(token, set())
        if response_index is not None:
            issuers.add(response_index)

    def needles(self, signing_key_file: str) -> dict[str, str]:
        found = {f"password {name}": value for name, value in self.passwords.items()}
        found["an argon2 hash"] = "$argon2"
        found["SECRET_KEY"] = self.secret_key
        found["JWT_SECRET_KEY"] = self.jwt_secret_key
        pem = Path(signing_key_file).read_bytes()
        body = "".join(line for line in pem.decode().splitlines() if not line.startswith("-----"))
        found["signing key PEM body"] = body
        for i, line in enumerate(pem.decode().splitlines()[1:-1]):
            found[f"signing key PEM line {i}"] = line
        key = serialization.load_pem_private_key(pem, password=None)
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        found["signing key raw (base64url)"] = b64url(raw)
        found["signing key raw (base64)"] = base64.b64encode(raw).decode().rstrip("=")
        found["signing key raw (hex)"] = raw.hex()
        return found


@dataclass
class Exchange:
    method: str
    path: str
    status: int
    headers: str
    body: str


Send = Callable[..., Exchange]


class Recorder:
    """Keeps every response; `send` is the transport (test client or real HTTP)."""

    def __init__(self, transport: Callable[..., tuple[int, str, str]]) -> None:
        self.transport = transport
        self.exchanges: list[Exchange] = []

    def __call__(self, method, path, json_body=None, headers=None, data=None) -> Exchange:
        status, head, body = self.transport(method, path, json_body, headers or {}, data)
        exchange = Exchange(method, path, status, head, body)
        self.exchanges.append(exchange)
        return exchange

    @property
    def last(self) -> int:
        return len(self.exchanges) - 1


def run_flow(
    send: Recorder, s: Secrets, make_admin: Callable[[str, str], None], oversized: bool = True
) -> None:
    """Everything a client can do, right and wrong; asserts only that the flow went as
    planned (the searching happens afterwards). `oversized`: also send a 2 MB body (a
    real gunicorn hangs up on it before urllib has sent it all)."""
    pw = s.passwords

    def expect(exchange: Exchange, status: int) -> dict[str, Any]:
        assert exchange.status == status, (exchange.method, exchange.path, exchange.body[:300])
        return json.loads(exchange.body) if exchange.body else {}

    def pair(exchange: Exchange) -> dict[str, Any]:
        tokens = expect(exchange, 200)
        s.issued(tokens["access_token"], send.last)
        s.issued(tokens["refresh_token"], send.last)
        return tokens

    # accounts
    for name in ("ada", "bob"):
        expect(
            send(
                "POST",
                f"{API}/auth/register",
                {"email": f"{name}@example.com", "password": pw[name]},
            ),
            201,
        )
    expect(
        send("POST", f"{API}/auth/register", {"email": "ada@example.com", "password": pw["ada"]}),
        409,
    )
    expect(
        send(
            "POST", f"{API}/auth/register", {"email": "c@example.com", "password": pw["too short"]}
        ),
        422,
    )
    expect(
        send(
            "POST",
            f"{API}/auth/register",
            data=f'{{"email": "d@example.com", "password": "{pw["ada"]}"'.encode(),
        ),
        400,
    )
    expect(
        send(
            "POST",
            f"{API}/auth/register",
            {"email": "e@example.com", "password": pw["ada"], "extra": pw["bob"]},
        ),
        422,
    )
    make_admin("root@example.com", pw["root"])

    # logins, right and wrong
    expect(
        send("POST", f"{API}/auth/login", {"email": "ada@example.com", "password": pw["wrong"]}),
        401,
    )
    expect(
        send("POST", f"{API}/auth/login", {"email": "nobody@example.com", "password": pw["ada"]}),
        401,
    )
    ada = pair(
        send("POST", f"{API}/auth/login", {"email": "ada@example.com", "password": pw["ada"]})
    )
    root = pair(
        send("POST", f"{API}/auth/login", {"email": "root@example.com", "password": pw["root"]})
    )
    expect(send("GET", f"{API}/auth/me", headers=bearer(ada["access_token"])), 200)

    # bad tokens
    claims = pyjwt.decode(ada["access_token"], options={"verify_signature": False})
    expired = pyjwt.encode(
        {**claims, "exp": datetime.now(UTC) - timedelta(minutes=1)}, s.jwt_secret_key, "HS256"
    )
    forged_admin = pyjwt.encode({**claims, "role": "admin"}, "x" * 40, "HS256")
    for token in (tampered(ada["access_token"]), expired, forged_admin, "not-a-token"):
        s.issued(token, None)
        expect(send("GET", f"{API}/auth/me", headers=bearer(token)), 401)
    expect(send("POST", f"{API}/auth/refresh", headers=bearer(ada["access_token"])), 401)
    expect(send("GET", f"{API}/auth/me", headers=bearer(ada["refresh_token"])), 401)

    # refresh rotates
    old_refresh = ada["refresh_token"]
    ada = pair(send("POST", f"{API}/auth/refresh", headers=bearer(old_refresh)))

    # licenses: by token, by password, wrong password, validation
    def activate(body: dict[str, Any], status: int, headers=None) -> dict[str, Any]:
        return expect(send("POST", f"{API}/licenses/activate", body, headers), status)

    lic = activate({"client_id": "ada-box"}, 201, bearer(ada["access_token"]))
    s.issued(lic["token"], send.last)
    bob = {"email": "bob@example.com", "password": pw["bob"]}
    bob_lic = activate({"client_id": "bob-box", **bob}, 201)
    s.issued(bob_lic["token"], send.last)
    activate({"client_id": "bob-box-2", **bob, "password": pw["wrong"]}, 401)
    again = activate({"client_id": "ada-box"}, 200, bearer(ada["access_token"]))
    s.issued(again["token"], send.last)
    verdict = expect(send("POST", f"{API}/licenses/validate", {"token": lic["token"]}), 200)
    assert verdict["code"] == "VALID"
    expect(send("POST", f"{API}/licenses/validate", {"token": tampered(lic["token"])}), 200)
    expect(send("GET", f"{API}/licenses", headers=bearer(ada["access_token"])), 200)
    expect(
        send("GET", f"{API}/licenses/{lic['license_id']}", headers=bearer(ada["access_token"])),
        200,
    )

    # orders
    key = {"Idempotency-Key": secrets.token_hex(8)}
    order = expect(
        send(
            "POST",
            f"{API}/orders",
            {"plan": "pro", "seats": 3, "payment_token": "tok_ok"},
            {**bearer(ada["access_token"]), **key},
        ),
        201,
    )
    expect(
        send(
            "POST",
            f"{API}/orders",
            {"plan": "pro", "payment_token": "tok_declined"},
            {**bearer(ada["access_token"]), "Idempotency-Key": secrets.token_hex(8)},
        ),
        402,
    )
    expect(send("GET", f"{API}/orders", headers=bearer(ada["access_token"])), 200)
    expect(send("GET", f"{API}/me/dashboard", headers=bearer(ada["access_token"])), 200)
    expect(
        send(
            "POST",
            f"{API}/orders/{order['order_id']}/cancel",
            headers=bearer(ada["access_token"]),
        ),
        200,
    )

    # admin
    admin = bearer(root["access_token"])
    for path in ("stats/users", "stats/licenses", "users", "audit-logs?limit=100"):
        expect(send("GET", f"{API}/admin/{path}", headers=admin), 200)
    users = expect(send("GET", f"{API}/admin/users?email=ada", headers=admin), 200)
    expect(send("GET", f"{API}/admin/users/{users['items'][0]['user_id']}", headers=admin), 200)
    current = expect(send("GET", f"{API}/admin/licenses/{lic['license_id']}", headers=admin), 200)
    expect(
        send(
            "PATCH",
            f"{API}/admin/licenses/{lic['license_id']}",
            {"status": "suspended"},
            {**admin, "If-Match": f'"{current["version"]}"'},
        ),
        200,
    )
    expect(send("GET", f"{API}/admin/stats/users", headers=bearer(ada["access_token"])), 403)

    # oversized and malformed bodies carrying a password
    if oversized:
        big = {"email": "ada@example.com", "password": pw["ada"] * 100_000}
        expect(send("POST", f"{API}/auth/login", data=json.dumps(big).encode()), 413)
    expect(
        send("POST", f"{API}/auth/login", {"email": "ada@example.com", "password": pw["ada"] * 20}),
        422,
    )

    # logout, then the spent and the revoked tokens
    expect(send("POST", f"{API}/auth/logout", headers=bearer(ada["access_token"])), 204)
    expect(send("GET", f"{API}/auth/me", headers=bearer(ada["access_token"])), 401)
    expect(send("POST", f"{API}/auth/refresh", headers=bearer(old_refresh)), 401)
    expect(send("POST", f"{API}/auth/refresh", headers=bearer(ada["refresh_token"])), 401)

    # the audit trail, read after everything happened
    audit = expect(send("GET", f"{API}/admin/audit-logs?limit=100", headers=admin), 200)
    assert len(audit["items"]) >= 10


def leaks(
    s: Secrets, signing_key_file: str, logs: dict[str, str], exchanges: list[Exchange]
) -> list[str]:
    """Every place a secret appears where it should not."""
    found = []
    needles = s.needles(signing_key_file)
    for token in s.tokens:
        needles[f"token …{token[-12:]}"] = token
        signature = token.rsplit(".", 1)[-1]
        if len(signature) >= 16:
            needles[f"signature of token …{token[-12:]}"] = signature
    places = dict(logs)
    for i, exchange in enumerate(exchanges):
        where = f"response {i} ({exchange.method} {exchange.path} {exchange.status})"
        places[f"{where} headers"] = exchange.headers
        places[f"{where} body"] = exchange.body
    for name, needle in needles.items():
        for place, text in places.items():
            if needle not in text:
                continue
            token = needle if name.startswith("token") else None
            if name.startswith("signature"):
                token = next(t for t in s.tokens if t.endswith("." + needle))
            if token is not None and place in {_body_of(i, exchanges) for i in s.tokens[token]}:
                continue  # a response that issued it
            found.append(f"{name} in {place}")
    return found


def _body_of(index: int, exchanges: list[Exchange]) -> str:
    exchange = exchanges[index]
    return f"response {index} ({exchange.method} {exchange.path} {exchange.status}) body"


# --- in process ----------------------------------------------------------------------


class Capture(logging.Handler):
    """Every record, formatted as both formatters the app uses (with their extra fields
    and any exception text)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.text, self.json = TextFormatter(), JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.text.format(record))
        self.lines.append(self.json.format(record))


@pytest.mark.parametrize("sql_echo", ["SQL_ECHO off", "SQL_ECHO on"])
def test_no_secret_in_logs_or_responses_in_process(app_config, signing_key_file, sql_echo):
    s = Secrets()
    app = create_app(
        {
            **app_config,
            "SECRET_KEY": s.secret_key,
            "JWT_SECRET_KEY": s.jwt_secret_key,
            "LOG_LEVEL": "DEBUG",
            "SQL_ECHO": sql_echo == "SQL_ECHO on",
        }
    )
    capture = Capture()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    cli_output: list[str] = []
    try:
        client = app.test_client()
        runner = app.test_cli_runner()

        def transport(method, path, json_body, headers, data):
            response = client.open(
                path,
                method=method,
                json=json_body,
                data=data,
                headers=headers,
                content_type="application/json" if data is not None else None,
            )
            head = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
            return response.status_code, head, response.get_data(as_text=True)

        def make_admin(email: str, password: str) -> None:
            result = runner.invoke(
                args=["users", "create-admin", email, "--password-stdin"], input=password + "\n"
            )
            assert result.exit_code == 0, result.output
            cli_output.append(result.output)

        send = Recorder(transport)
        run_flow(send, s, make_admin)
    finally:
        root.removeHandler(capture)
        root.setLevel(previous)
        app.extensions["db"].dispose()
    assert len(capture.lines) > 50  # the capture saw the run
    logs = {"application log": "\n".join(capture.lines), "CLI output": "\n".join(cli_output)}
    found = leaks(s, signing_key_file, logs, send.exchanges)
    assert not found, "\n".join(found)


# --- a real gunicorn -----------------------------------------------------------------


@pytest.mark.slow
def test_no_secret_in_gunicorn_logs_or_responses(database_url, signing_key_file, tmp_path):
    import urllib.error
    import urllib.request

    s = Secrets()
    settings = {
        "SECRET_KEY": s.secret_key,
        "JWT_SECRET_KEY": s.jwt_secret_key,
        "LICENSE_SIGNING_KEYS": signing_key_file,
        "SANDBOX_LEDGER": str(tmp_path / "ledger.jsonl"),
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST": "1024",
    }
    env = project_env(APP_ENV="testing", DATABASE_URL=database_url, **settings)  # for the CLI
    cli_output: list[str] = []
    server_output: list[str] = []

    def transport(method, path, json_body, headers, data):
        payload = (
            data
            if data is not None
            else (None if json_body is None else json.dumps(json_body).encode())
        )
        request = urllib.request.Request(base + path, data=payload, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        for name, value in headers.items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                status, head, raw = response.status, str(response.headers), response.read()
        except urllib.error.HTTPError as err:
            status, head, raw = err.code, str(err.headers), err.read()
        return status, head, raw.decode("utf-8", "replace")

    def make_admin(email: str, password: str) -> None:
        result = run_flask(
            "users", "create-admin", email, "--password-stdin", env=env, input=password + "\n"
        )
        assert result.returncode == 0, result.stderr
        cli_output.append(result.stdout + result.stderr)

    with gunicorn_server(
        database_url,
        workers=2,
        output=server_output,
        LOG_LEVEL="DEBUG",
        GUNICORN_ACCESS_LOG="-",
        **settings,
    ) as base:
        send = Recorder(transport)
        run_flow(send, s, make_admin, oversized=False)
    [output] = server_output
    assert "Booting worker" in output and "/api/v1/auth/login" in output  # DEBUG, access log
    logs = {"gunicorn output": output, "CLI output": "\n".join(cli_output)}
    found = leaks(s, signing_key_file, logs, send.exchanges)
    assert not found, "\n".join(found)
