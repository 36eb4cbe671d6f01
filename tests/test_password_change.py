"""Changing a password (POST /api/v1/auth/password, and the portal's form) on SQLite and
PostgreSQL: the current password is checked like a login (same lockout), the new one
takes effect, and every other session ends — API tokens and browser sessions alike."""

from __future__ import annotations

from sqlalchemy import select

from app.admin.models import AuditLog
from tests.helpers import PASSWORD, assert_problem, auth_headers, bearer, login, registered
from tests.test_console import csrf_of, rows, sign_in

NEW = "staple battery horse"
URL = "/api/v1/auth/password"


def test_a_password_change_ends_every_other_session_and_answers_a_new_pair(app, client):
    registered(client)
    phone, laptop = login(client).get_json(), login(client).get_json()
    browser = app.test_client()
    sign_in(browser, "ada@example.com")
    response = client.post(
        URL,
        json={"current_password": PASSWORD, "new_password": NEW},
        headers=bearer(laptop["access_token"]),
    )
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    fresh = response.get_json()
    # The new pair works; every token issued before the change does not, its own included.
    assert client.get("/api/v1/auth/me", headers=bearer(fresh["access_token"])).status_code == 200
    for old in (phone, laptop):
        assert_problem(
            client.get("/api/v1/auth/me", headers=bearer(old["access_token"])),
            401,
            "token_revoked",
        )
        assert_problem(
            client.post("/api/v1/auth/refresh", headers=bearer(old["refresh_token"])),
            401,
            "token_revoked",
        )
    refreshed = client.post("/api/v1/auth/refresh", headers=bearer(fresh["refresh_token"]))
    assert refreshed.status_code == 200
    # The browser signed in before is signed out.
    assert browser.get("/account/").status_code == 302
    # The old password no longer signs in; the new one does.
    assert_problem(login(client), 401, "invalid_credentials")
    assert login(client, password=NEW).status_code == 200
    (entry,) = rows(app, AuditLog, AuditLog.action == "PASSWORD_CHANGED")
    assert entry.details == {"browser_sessions_ended": 1}


def test_a_wrong_current_password_is_refused_and_counts_for_the_lockout(app, client):
    registered(client)
    headers = auth_headers(client)
    wrong = {"current_password": "not my password", "new_password": NEW}
    for _ in range(4):
        assert_problem(client.post(URL, json=wrong, headers=headers), 403, "wrong_password")
    assert_problem(client.post(URL, json=wrong, headers=headers), 423, "account_locked")
    right = {"current_password": PASSWORD, "new_password": NEW}
    assert_problem(client.post(URL, json=right, headers=headers), 423, "account_locked")
    # Nothing changed: the token still works, the old password is still the password.
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 200
    assert not rows(app, AuditLog, AuditLog.action == "PASSWORD_CHANGED")


def test_the_new_password_follows_the_password_rules(app, client):
    registered(client)
    headers = auth_headers(client)
    for new in ("short", "x" * 129):
        response = client.post(
            URL, json={"current_password": PASSWORD, "new_password": new}, headers=headers
        )
        assert_problem(response, 422)
    assert_problem(client.post(URL, json={"current_password": PASSWORD}, headers=headers), 422)
    assert_problem(client.post(URL, json={"current_password": PASSWORD, "new_password": NEW}), 401)


def test_the_portal_form_keeps_this_browser_and_ends_the_others(app, client):
    registered(client)
    api = login(client).get_json()
    other = app.test_client()
    sign_in(other, "ada@example.com")
    sign_in(client, "ada@example.com")
    page = client.get("/account/password")
    assert page.status_code == 200
    form = {"csrf_token": csrf_of(page), "current_password": "nope", "new_password": NEW}
    response = client.post("/account/password", data=form)
    assert response.status_code == 403
    assert "The current password is wrong." in response.get_data(as_text=True)
    form["current_password"] = PASSWORD
    response = client.post("/account/password", data=form)
    assert response.status_code == 303
    assert client.get("/account/").status_code == 200  # this browser stays signed in
    assert other.get("/account/").status_code == 302
    assert_problem(
        client.get("/api/v1/auth/me", headers=bearer(api["access_token"])), 401, "token_revoked"
    )
    assert login(client, password=NEW).status_code == 200


def test_a_later_change_moves_the_marker_forward(app, client):
    from app.auth.models import TokenRevocation
    from app.kernel.db import get_session
    from app.kernel.ownership import OPERATOR, acting_as

    registered(client)
    first = login(client).get_json()
    second = client.post(
        URL,
        json={"current_password": PASSWORD, "new_password": NEW},
        headers=bearer(first["access_token"]),
    ).get_json()
    third = client.post(
        URL,
        json={"current_password": NEW, "new_password": PASSWORD},
        headers=bearer(second["access_token"]),
    ).get_json()
    assert client.get("/api/v1/auth/me", headers=bearer(third["access_token"])).status_code == 200
    assert_problem(
        client.get("/api/v1/auth/me", headers=bearer(second["access_token"])), 401, "token_revoked"
    )
    with app.app_context(), acting_as(OPERATOR):
        markers = (
            get_session()
            .scalars(select(TokenRevocation).where(TokenRevocation.kind == "user"))
            .all()
        )
    assert len(markers) == 1
