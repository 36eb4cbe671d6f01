"""A password change ends every other session, also one that is being made while it runs
(outside test, 2026-12-01: F3, F4). A login proves the password, then records the login
in a transaction, then signs its tokens; a refresh checks its token, then spends it in a
transaction, then signs the new pair. A change that commits between those steps must still
end what they make: here it is made at each of those moments (from another thread, as
another request would), and the session made around it may not work afterwards."""

from __future__ import annotations

import threading

import pytest

from app.auth.accounts import routes as account_routes
from app.auth.accounts import service, tokens
from tests.helpers import ADA, PASSWORD, bearer, sign_up

NEW = "staple battery horse"


def _change_now(app, access: str) -> None:
    """POST /auth/password from another thread (its own request), to completion."""
    answers = []

    def change() -> None:
        answers.append(
            app.test_client().post(
                "/api/v1/auth/password",
                headers=bearer(access),
                json={"current_password": PASSWORD, "new_password": NEW},
            )
        )

    thread = threading.Thread(target=change)
    thread.start()
    thread.join(60)
    assert [a.status_code for a in answers] == [200]


def _once(monkeypatch, module, name: str, when: str, change) -> None:
    """`module.name` runs `change()` just "before" or "after" itself, the first time it is
    called only."""
    real = getattr(module, name)
    pending = [change]

    def hooked(*args, **kwargs):
        if pending and when == "before":
            pending.pop()()
        result = real(*args, **kwargs)
        if pending and when == "after":
            pending.pop()()
        return result

    monkeypatch.setattr(module, name, hooked)


def _ended(client, answer) -> bool:
    """The session an answer made (if it made one) no longer works."""
    if answer.status_code != 200:
        return answer.status_code == 401
    pair = answer.get_json()
    me = client.get("/api/v1/auth/me", headers=bearer(pair["access_token"]))
    again = client.post("/api/v1/auth/refresh", headers=bearer(pair["refresh_token"]))
    return me.status_code == 401 and again.status_code == 401


# Where the change commits: after the login's password check (the old password proved,
# nothing written yet), or after its transaction (the login recorded, no token signed yet);
# after the refresh token was verified, or after it was spent.
LOGIN_MOMENTS = {
    "after the check": (service, "check_credentials", "after"),
    "after the transaction": (tokens, "issue_pair", "before"),
}
REFRESH_MOMENTS = {
    "after the token's check": (account_routes, "transaction", "before"),
    "after the transaction": (tokens, "issue_pair", "before"),
}


@pytest.mark.parametrize("moment", LOGIN_MOMENTS)
def test_a_login_with_the_old_password_does_not_outlive_its_change(app, client, moment):
    owner = sign_up(client)
    with pytest.MonkeyPatch.context() as patch:
        _once(patch, *LOGIN_MOMENTS[moment], lambda: _change_now(app, owner.access))
        answer = client.post("/api/v1/auth/login", json={"email": ADA, "password": PASSWORD})
    assert _ended(client, answer), answer.get_json()
    new = client.post("/api/v1/auth/login", json={"email": ADA, "password": NEW})
    me = client.get("/api/v1/auth/me", headers=bearer(new.get_json()["access_token"]))
    assert me.status_code == 200


@pytest.mark.parametrize("moment", REFRESH_MOMENTS)
def test_a_refresh_does_not_outlive_a_password_change(app, client, moment):
    owner = sign_up(client)
    other = client.post("/api/v1/auth/login", json={"email": ADA, "password": PASSWORD})
    stolen = other.get_json()["refresh_token"]
    with pytest.MonkeyPatch.context() as patch:
        _once(patch, *REFRESH_MOMENTS[moment], lambda: _change_now(app, owner.access))
        answer = client.post("/api/v1/auth/refresh", headers=bearer(stolen))
    assert _ended(client, answer), answer.get_json()
