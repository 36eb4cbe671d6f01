"""The web console in process, on SQLite and PostgreSQL: browser sessions, CSRF, cookies,
the API staying cookie-free, and the console calling the same services as the API.
The same scenarios in a real browser against gunicorn: tests/test_console_browser.py."""

from __future__ import annotations

import re

from sqlalchemy import select

from app.admin.models import AuditLog
from app.auth.accounts.browser_sessions import BrowserSession
from app.auth.models import TokenRevocation
from tests.helpers import PASSWORD, assert_problem, auth_headers, login, registered


def csrf_of(page) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert match, "the page has no CSRF token"
    return match.group(1)


def activated(client, client_id: str, email: str = "ada@example.com") -> dict:
    """A license activated with the customer's email and password (201): its body."""
    body = {"client_id": client_id, "email": email, "password": PASSWORD}
    response = client.post("/api/v1/licenses/activate", json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def sign_in(client, email: str, password: str = PASSWORD, next_: str | None = None):
    page = client.get("/account/sign-in")
    url = "/account/sign-in" + (f"?next={next_}" if next_ else "")
    return client.post(
        url, data={"email": email, "password": password, "csrf_token": csrf_of(page)}
    )


def ada_order_form(client, **fields: str) -> dict[str, str]:
    """Ada registered and signed in to the console, and the order form of her plans page
    (its CSRF token and idempotency key) filled in with `fields` and a good payment token."""
    registered(client, "ada@example.com")
    sign_in(client, "ada@example.com")
    page = client.get("/account/plans")
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page.get_data(as_text=True))
    assert key, "the plans page has no idempotency key"
    form = {"csrf_token": csrf_of(page), "idempotency_key": key.group(1)}
    return {**form, "payment_token": "tok_ok", **fields}


def make_admin(runner, email: str) -> None:
    result = runner.invoke(
        args=["users", "create-admin", email, "--password-stdin"], input=PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output


def rows(app, model, *where):
    from app.kernel.db import get_session
    from app.kernel.ownership import OPERATOR, acting_as

    with app.app_context(), acting_as(OPERATOR):
        return get_session().scalars(select(model).where(*where)).all()


def test_sign_in_sets_a_console_cookie_and_shows_the_dashboard(app, client):
    user = registered(client, "ada@example.com")
    response = sign_in(client, "ada@example.com")
    assert response.status_code == 303
    assert response.headers["Location"] == "/account/"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("console=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # outside production: plain http in development
    page = client.get("/account/")
    assert page.status_code == 200
    assert "<h1>My licenses</h1>" in page.get_data(as_text=True)
    assert "0 of 1" in page.get_data(as_text=True)
    # One server-side session, storing a digest (the cookie's secret is not in the table).
    (row,) = rows(app, BrowserSession, BrowserSession.user_id == user["user_id"])
    assert len(row.session_id) == 64
    assert row.session_id not in cookie
    (login,) = rows(app, AuditLog, AuditLog.action == "LOGIN")
    assert login.details == {"via": "console"}


def test_wrong_password_is_refused_like_the_api_and_counts_for_the_lockout(app, client):
    registered(client, "ada@example.com")
    for _ in range(4):
        response = sign_in(client, "ada@example.com", "wrong password")
        assert response.status_code == 401
        assert "The email or the password is wrong." in response.get_data(as_text=True)
    # The fifth failure locks this address out, in the console and in the API alike.
    assert sign_in(client, "ada@example.com", "wrong password").status_code == 423
    response = sign_in(client, "ada@example.com")
    assert response.status_code == 423
    assert "Retry-After" in response.headers
    api = login(client)
    assert_problem(api, 423, "account_locked")


def test_console_login_obeys_the_login_rate_limits(app_config):
    from app import create_app

    limited = create_app(
        {
            **app_config,
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": "memory://",
            "RATELIMIT_LOGIN_PER_IP": "5/minute",
            "RATELIMIT_LOGIN_PER_ACCOUNT": "3/minute",
        }
    )
    try:
        client = limited.test_client()
        # Per account and address: the fourth try at one email from one address.
        statuses = [sign_in(client, "nobody@example.com").status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        response = sign_in(client, "nobody@example.com")
        assert response.status_code == 429 and "Retry-After" in response.headers
        assert "Too many attempts" in response.get_data(as_text=True)
        # Per address, checked first: the five tries above all counted (the API's order),
        # so the sixth is refused, whatever the email.
        other = limited.test_client()
        statuses = [sign_in(other, f"x{i}@example.com").status_code for i in range(3)]
        assert statuses == [429, 429, 429]
    finally:
        limited.extensions["db"].dispose()


def test_a_post_without_its_csrf_token_is_refused(app, client):
    registered(client, "ada@example.com")
    response = client.post(
        "/account/sign-in", data={"email": "ada@example.com", "password": PASSWORD}
    )
    assert response.status_code == 400
    assert "This form has expired" in response.get_data(as_text=True)
    assert "Set-Cookie" not in response.headers or "sid" not in response.headers["Set-Cookie"]
    # Signed in, a state change with a wrong token changes nothing.
    sign_in(client, "ada@example.com")
    response = client.post("/account/sign-out-everywhere", data={"csrf_token": "forged"})
    assert response.status_code == 400
    assert client.get("/account/").status_code == 200


def test_sign_out_revokes_the_session_server_side(app, client):
    registered(client, "ada@example.com")
    sign_in(client, "ada@example.com")
    stolen = client.get_cookie("console").value
    page = client.get("/account/")
    assert client.post("/account/sign-out", data={"csrf_token": csrf_of(page)}).status_code == 303
    assert client.get("/account/").status_code == 302
    # A copy of the old cookie signs nobody in: the session is revoked in the database.
    client.set_cookie("console", stolen)
    response = client.get("/account/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/account/sign-in")
    (revocation,) = rows(app, TokenRevocation, TokenRevocation.kind == "session")
    assert revocation.reason == "sign_out"


def test_a_password_change_gives_this_browser_a_new_session(app, client):
    """A cookie copied before the password change signs nobody in afterwards, even a copy of
    the changing browser's own: the browser that made the change carries on with a new one."""
    registered(client, "ada@example.com")
    sign_in(client, "ada@example.com")
    stolen = client.get_cookie("console").value
    page = client.get("/account/password")
    response = client.post(
        "/account/password",
        data={
            "current_password": PASSWORD,
            "new_password": "a brand new passphrase",
            "csrf_token": csrf_of(page),
        },
    )
    assert response.status_code == 303
    assert client.get("/account/").status_code == 200
    assert client.get_cookie("console").value != stolen
    thief = app.test_client()
    thief.set_cookie("console", stolen)
    response = thief.get("/account/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/account/sign-in")


def test_sign_out_everywhere_ends_every_browser(app):
    first, second = app.test_client(), app.test_client()
    registered(first, "ada@example.com")
    sign_in(first, "ada@example.com")
    sign_in(second, "ada@example.com")
    assert second.get("/account/").status_code == 200
    page = first.get("/account/")
    response = first.post("/account/sign-out-everywhere", data={"csrf_token": csrf_of(page)})
    assert response.status_code == 303
    assert first.get("/account/").status_code == 302
    assert second.get("/account/").status_code == 302
    (entry,) = rows(app, AuditLog, AuditLog.action == "LOGOUT_EVERYWHERE")
    assert entry.details["sessions"] == 2


def test_the_api_stays_cookie_free(app, client):
    registered(client, "ada@example.com")
    sign_in(client, "ada@example.com")
    # The console's cookie does not authenticate an API call...
    assert_problem(client.get("/api/v1/auth/me"), 401, "unauthorized")
    # ...and no API answer sets a cookie.
    response = login(client)
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers


def test_the_console_has_a_strict_csp_and_no_inline_script(app, client):
    page = client.get("/account/sign-in")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp
    html = page.get_data(as_text=True)
    assert "<script>" not in html and "style=" not in html
    assert re.search(r'<script src="/console/static/htmx-\d+\.\d+\.\d+\.min\.js"', html)
    assert page.headers["Cache-Control"] == "no-store"


def test_production_cookie_is_secure_with_the_host_prefix(app, client):
    app.config["CONSOLE_COOKIE_SECURE"] = True  # what APP_ENV=production sets
    page = client.get("/account/sign-in")
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith("__Host-console=")
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Path=/" in cookie and "Domain" not in cookie


def test_a_non_admin_gets_a_403_page_and_anonymous_a_sign_in(app, client):
    registered(client, "ada@example.com")
    response = client.get("/console/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/account/sign-in?next=/console/"
    sign_in(client, "ada@example.com")
    response = client.get("/console/users")
    assert response.status_code == 403
    assert "Admins only" in response.get_data(as_text=True)


def test_next_never_leaves_the_site(app, client):
    registered(client, "ada@example.com")
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example", "/api/v1/x"):
        response = sign_in(client, "ada@example.com", next_=target)
        assert response.headers["Location"] == "/account/", target
        client.post("/account/sign-out", data={"csrf_token": csrf_of(client.get("/account/"))})


def test_deactivate_from_the_portal_frees_the_seat_and_validate_says_revoked(app, client):
    registered(client, "ada@example.com")
    headers = auth_headers(client, "ada@example.com")
    activated = client.post(
        "/api/v1/licenses/activate", json={"client_id": "laptop-1"}, headers=headers
    ).get_json()
    sign_in(client, "ada@example.com")
    page = client.get("/account/")
    assert "laptop-1" in page.get_data(as_text=True)
    response = client.post(
        f"/account/licenses/{activated['license_id']}/deactivate",
        data={"csrf_token": csrf_of(page)},
    )
    assert response.status_code == 303
    assert "0 of 1" in client.get("/account/").get_data(as_text=True)
    verdict = client.post(
        "/api/v1/licenses/validate",
        json={"token": activated["token"], "client_id": "laptop-1"},
    ).get_json()
    assert verdict["code"] == "REVOKED"
    (entry,) = rows(app, AuditLog, AuditLog.action == "LICENSE_DEACTIVATED")
    assert entry.details["reason"] == "deactivated_by_owner"


def test_someone_elses_license_is_not_found(app, client):
    registered(client, "ada@example.com")
    registered(client, "bob@example.com")
    lic = activated(client, "bobs", "bob@example.com")
    sign_in(client, "ada@example.com")
    page = client.get("/account/")
    response = client.post(
        f"/account/licenses/{lic['license_id']}/deactivate", data={"csrf_token": csrf_of(page)}
    )
    assert response.status_code == 404
    assert client.get(f"/account/licenses/{lic['license_id']}/token").status_code == 404


def test_admin_suspends_with_the_page_version_and_a_stale_page_gets_the_conflict(
    app, client, runner
):
    registered(client, "ada@example.com")
    lic = activated(client, "laptop-1")
    make_admin(runner, "root@example.com")
    sign_in(client, "root@example.com")
    found = client.get("/console/users", query_string={"email": "ada@"})
    assert "ada@example.com" in found.get_data(as_text=True)
    page = client.get(f"/console/users/{lic['user_id']}")
    token = csrf_of(page)
    url = f"/console/licenses/{lic['license_id']}/status"
    response = client.post(url, data={"csrf_token": token, "action": "Suspend", "version": "1"})
    assert response.status_code == 303
    verdict = client.post(
        "/api/v1/licenses/validate", json={"token": lic["token"], "client_id": "laptop-1"}
    ).get_json()
    assert verdict["code"] == "SUSPENDED"
    # The same (now stale) page asks to revoke version 1: nothing changes, the conflict shows.
    response = client.post(url, data={"csrf_token": token, "action": "Revoke", "version": "1"})
    assert response.status_code == 409
    html = response.get_data(as_text=True)
    assert "Nothing was changed" in html and "now suspended (version 2)" in html
    admin_headers = auth_headers(client, "root@example.com")
    current = client.get(f"/api/v1/admin/licenses/{lic['license_id']}", headers=admin_headers)
    assert current.get_json()["status"] == "suspended"


def test_admin_batch_is_all_or_nothing(app, client, runner):
    registered(client, "ada@example.com")
    client.post(
        "/api/v1/orders",
        json={"plan": "pro", "payment_token": "tok_ok"},
        headers={**auth_headers(client, "ada@example.com"), "Idempotency-Key": "k1"},
    )
    ids = [activated(client, f"pc-{i}") for i in range(2)]
    make_admin(runner, "root@example.com")
    sign_in(client, "root@example.com")
    page = client.get(f"/console/users/{ids[0]['user_id']}")
    url = f"/console/users/{ids[0]['user_id']}/licenses/batch"
    stale = [f"{ids[0]['license_id']}:1", f"{ids[1]['license_id']}:7"]
    response = client.post(
        url, data={"csrf_token": csrf_of(page), "action": "Suspend", "license": stale}
    )
    assert response.status_code == 412
    assert "Nothing was changed" in response.get_data(as_text=True)
    fresh = [f"{x['license_id']}:1" for x in ids]
    response = client.post(
        url, data={"csrf_token": csrf_of(page), "action": "Suspend", "license": fresh}
    )
    assert response.status_code == 303
    for x in ids:
        verdict = client.post(
            "/api/v1/licenses/validate", json={"token": x["token"], "client_id": x["client_id"]}
        ).get_json()
        assert verdict["code"] == "SUSPENDED"


def test_a_users_batch_acts_only_on_that_users_licenses(app, client, runner):
    """The batch form under /console/users/<ada> cannot change a license of someone else's
    (a page acts on what it shows): nothing at all is changed."""
    made = {}
    for email in ("ada@example.com", "hal@example.com"):
        registered(client, email)
        answer = client.post(
            "/api/v1/licenses/activate",
            json={"client_id": f"pc-{email[:3]}", "email": email, "password": PASSWORD},
        )
        assert answer.status_code == 201, answer.get_json()
        made[email] = answer.get_json()
    ada, hal = made["ada@example.com"], made["hal@example.com"]
    make_admin(runner, "root@example.com")
    sign_in(client, "root@example.com")
    page = client.get(f"/console/users/{ada['user_id']}")
    response = client.post(
        f"/console/users/{ada['user_id']}/licenses/batch",
        data={
            "csrf_token": csrf_of(page),
            "action": "Suspend",
            "license": [f"{ada['license_id']}:1", f"{hal['license_id']}:1"],
        },
    )
    assert response.status_code == 422
    for x in (ada, hal):
        verdict = client.post(
            "/api/v1/licenses/validate", json={"token": x["token"], "client_id": x["client_id"]}
        ).get_json()
        assert verdict["code"] == "VALID"


def test_buying_twice_with_one_rendered_form_charges_once(app, client):
    form = ada_order_form(client, plan="pro", seats="3")
    assert client.post("/account/orders", data=form).status_code == 303
    assert client.post("/account/orders", data=form).status_code == 303
    orders = client.get("/api/v1/orders", headers=auth_headers(client, "ada@example.com"))
    assert len(orders.get_json()["items"]) == 1
    assert "3 of" not in client.get("/account/").get_data(as_text=True)
    assert "0 of 3" in client.get("/account/").get_data(as_text=True)


def test_a_bad_order_form_is_a_clear_4xx(app, client):
    registered(client, "ada@example.com")
    sign_in(client, "ada@example.com")
    page = client.get("/account/plans")
    base = {"csrf_token": csrf_of(page), "idempotency_key": "k-1", "payment_token": "tok_ok"}
    for plan, seats, status, text in (
        ("free", "", 422, "is not a plan that can be bought"),
        ("pro", "51", 422, "at most 50 seats"),
        ("pro", "three", 422, "whole number"),
    ):
        response = client.post("/account/orders", data={**base, "plan": plan, "seats": seats})
        assert response.status_code == status, (plan, seats)
        assert text in response.get_data(as_text=True)
        assert "Traceback" not in response.get_data(as_text=True)


def test_the_admin_pages_render(app, client, runner):
    registered(client, "ada@example.com")
    make_admin(runner, "root@example.com")
    sign_in(client, "root@example.com")
    for path in ("/console/", "/console/users", "/console/audit", "/console/operations"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.get_data(as_text=True).count("<h1>") == 1, path
    overview = client.get("/console/").get_data(as_text=True)
    assert "<svg" in overview and 'aria-label="Users per plan"' in overview
    audit = client.get("/console/audit", query_string={"action": "LOGIN"}).get_data(as_text=True)
    assert "LOGIN" in audit
    bad = client.get("/console/audit", query_string={"since": "yesterday"})
    assert bad.status_code == 422


# --- who may reach what: every console route, from the route table ----------------------

PUBLIC_PAGES = {"/account/sign-in", "/account/register"}


def console_routes(app) -> list[tuple[str, str]]:
    rows = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("console_") and rule.endpoint != "console_static.static":
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                path = re.sub(r"<[^>]+>", "x", rule.rule)
                rows.add((method, path))
    return sorted(rows)


def test_every_console_route_needs_a_session_and_admin_pages_an_admin(app, client, runner):
    routes = console_routes(app)
    assert len(routes) >= 20
    registered(client, "ada@example.com")
    make_admin(runner, "root@example.com")
    admin_bearer = auth_headers(client, "root@example.com")
    anonymous = app.test_client()
    for method, path in routes:
        # Anonymous, even with an admin's Bearer token: the console ignores it.
        response = anonymous.open(path, method=method, headers=admin_bearer)
        if method == "POST":
            assert response.status_code == 400, (method, path)  # no CSRF token, no session
        elif path in PUBLIC_PAGES:
            assert response.status_code == 200, (method, path)
        else:
            assert response.status_code == 302, (method, path)
            assert response.headers["Location"].startswith("/account/sign-in?next="), path
    sign_in(client, "ada@example.com")
    token = csrf_of(client.get("/account/"))
    for method, path in routes:
        if not path.startswith("/console/"):
            continue
        response = client.open(path, method=method, data={"csrf_token": token})
        assert response.status_code == 403, (method, path)
        assert "Admins only" in response.get_data(as_text=True)


def test_expired_browser_sessions_expire_and_are_pruned(app, client, runner):
    from datetime import timedelta

    from sqlalchemy import update

    from app.kernel.db import get_session, transaction, utcnow
    from app.kernel.ownership import OPERATOR, acting_as

    registered(client, "ada@example.com")
    sign_in(client, "ada@example.com")
    assert client.get("/account/").status_code == 200
    with app.app_context(), acting_as(OPERATOR):
        session = get_session()
        with transaction(session):
            session.execute(
                update(BrowserSession).values(expires_at=utcnow() - timedelta(seconds=1))
            )
    assert client.get("/account/").status_code == 302  # expired: signed out
    result = runner.invoke(args=["tokens", "prune"])
    assert result.exit_code == 0, result.output
    assert ", 1 expired browser session(s)" in result.output
    assert not rows(app, BrowserSession)


def test_a_license_token_downloads_as_a_file_that_validates(app, client):
    registered(client, "ada@example.com")
    lic = activated(client, "laptop-1")
    sign_in(client, "ada@example.com")
    response = client.get(f"/account/licenses/{lic['license_id']}/token")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="{lic["license_id"]}.jwt"'
    )
    token = response.get_data(as_text=True).strip()
    verdict = client.post(
        "/api/v1/licenses/validate", json={"token": token, "client_id": "laptop-1"}
    ).get_json()
    assert verdict["code"] == "VALID"


def test_an_order_is_cancelled_from_the_portal(app, client):
    form = ada_order_form(client, plan="pro")
    assert client.post("/account/orders", data=form).status_code == 303
    orders = client.get("/account/orders")
    order_id = re.search(r"<code>(ord_\w+)</code>", orders.get_data(as_text=True)).group(1)
    response = client.post(
        f"/account/orders/{order_id}/cancel", data={"csrf_token": csrf_of(orders)}
    )
    assert response.status_code == 303
    api = client.get(f"/api/v1/orders/{order_id}", headers=auth_headers(client, "ada@example.com"))
    assert api.get_json()["status"] == "cancelled"
    assert "0 of 1" in client.get("/account/").get_data(as_text=True)  # back to the free seat


def test_a_database_outage_or_a_bug_is_a_page_not_json(app, client, monkeypatch):
    """The console answers a database outage (503, retry) and an unexpected error (500)
    with an HTML page like its other errors, never the API's problem+json or a traceback."""
    from sqlalchemy.exc import InterfaceError

    from app.console import web

    registered(client, "ada@example.com")
    sign_in(client, "ada@example.com")

    def unavailable(*_args, **_kwargs):
        raise InterfaceError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(web.browser_sessions, "resolve", unavailable)
    response = client.get("/account/")
    assert response.status_code == 503
    assert response.mimetype == "text/html"
    assert response.headers["Retry-After"] == "1"
    assert "<h1>" in response.get_data(as_text=True)

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(web.browser_sessions, "resolve", broken)
    response = client.get("/account/")
    assert response.status_code == 500
    assert response.mimetype == "text/html"
    assert "a bug" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
