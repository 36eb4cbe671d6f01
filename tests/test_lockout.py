"""Login lockout that an attacker cannot aim (docs/adr/0008-login-lockout.md), on SQLite and
PostgreSQL, with an injected clock.

- Five wrong passwords from one address lock that address out of that account; the owner,
  from another address, still logs in.
- Locks back off (1, 2, 4 … 30 minutes), and start over after a quiet window.
- Only failures from many addresses reach the account-wide ceiling; a single address
  hammering as fast as its locks allow never does.
- An email without an account is throttled exactly like one with: same statuses, bodies,
  headers and number of password-hash verifications.
- `flask users unlock EMAIL` and POST /admin/users/{id}/unlock lift the locks, audited.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from app.kernel.db import get_session, utcnow
from app.kernel.ownership import OPERATOR, acting_as
from tests.helpers import API, PASSWORD, assert_problem, audit, auth_headers, login, registered

WRONG = "wrong password!"
OWNER, ATTACKER = "198.51.100.7", "203.0.113.9"


def fullwidth(text: str) -> str:
    """ASCII letters as their fullwidth look-alikes (U+FF01…)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


class Clock:
    """The time the login routes see; moved by the test, never by waiting."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("app.auth.accounts.routes.utcnow", clock, raising=False)
    monkeypatch.setattr("app.auth.licensing.routes.utcnow", clock, raising=False)
    return clock


@pytest.fixture
def verifications(monkeypatch) -> list[str]:
    """Every argon2 verification (of a real or a dummy hash), in order."""
    seen: list[str] = []
    real = PasswordHasher.verify

    def counting(self, hash_, password):
        seen.append(hash_)
        return real(self, hash_, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting)
    return seen


def test_the_attackers_address_is_locked_and_the_owners_is_not(app, client, clock, verifications):
    user = registered(client)
    statuses = [login(client, password=WRONG, ip=ATTACKER).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 423]
    locked = login(client, ip=ATTACKER)  # even the right password, from there
    body = assert_problem(locked, 423, "account_locked")
    assert locked.headers["Retry-After"] == "61"  # the first lock: one minute
    assert "locked_until" in body
    assert len(verifications) == 5  # a locked address costs no hash verification
    # The owner, from home, is not locked out.
    assert login(client, ip=OWNER).status_code == 200
    [entry] = audit(app, "ACCOUNT_LOCKED")
    assert (entry.user_id, entry.ip_address) == (user["user_id"], ATTACKER)
    assert (entry.details["scope"], entry.details["lock"]) == ("address", 1)
    # A minute later the attacker's address may try again (and the right password works).
    clock.advance(61)
    assert login(client, ip=ATTACKER).status_code == 200


def test_locks_back_off_and_start_over_after_a_quiet_window(client, clock):
    registered(client)

    def lock_once() -> int:
        for _ in range(4):
            assert login(client, password=WRONG, ip=ATTACKER).status_code == 401
        response = login(client, password=WRONG, ip=ATTACKER)
        assert response.status_code == 423
        return int(response.headers["Retry-After"])

    waits = []
    for _ in range(8):
        waits.append(lock_once())
        clock.advance(waits[-1])  # straight back when the lock ends
    assert waits == [61, 121, 241, 481, 961, 1801, 1801, 1801]
    # Quiet for longer than the window after the last lock: the next lock is short again.
    clock.advance(16 * 60)
    assert lock_once() == 61


def test_one_address_never_reaches_the_account_ceiling_many_do(app, client, clock):
    registered(client)
    # Two hours of one address failing as fast as its locks let it.
    tried = 0
    end = clock.now + timedelta(hours=2)
    while clock.now < end:
        response = login(client, password=WRONG, ip=ATTACKER)
        tried += response.status_code == 401
        if response.status_code == 423:
            clock.advance(int(response.headers["Retry-After"]))
    assert tried >= 30
    assert login(client, ip=OWNER).status_code == 200  # the owner never noticed
    assert {e.details["scope"] for e in audit(app, "ACCOUNT_LOCKED")} == {"address"}

    # Fifty failures from ten addresses within the window: the account itself locks.
    for n in range(10):
        for _ in range(5):
            login(client, password=WRONG, ip=f"192.0.2.{n + 1}")
    response = login(client, ip=OWNER)
    assert_problem(response, 423, "account_locked")
    assert response.headers["Retry-After"] == "61"  # a short lock, doubling if it goes on
    [account_lock] = [e for e in audit(app, "ACCOUNT_LOCKED") if e.details["scope"] == "account"]
    assert account_lock.details["lock"] == 1
    clock.advance(61)
    assert login(client, ip=OWNER).status_code == 200


def test_an_unknown_email_is_throttled_exactly_like_a_known_one(client, clock, verifications):
    registered(client, "ada@example.com")

    def attack(email: str):
        before = len(verifications)
        answers = []
        for _ in range(7):
            response = login(client, email=email, password=WRONG, ip=ATTACKER)
            headers = {k: v for k, v in response.headers if k in ("Retry-After", "Content-Type")}
            answers.append((response.status_code, response.get_json(), headers))
        return answers, len(verifications) - before

    known, known_verified = attack("ada@example.com")
    unknown, unknown_verified = attack("nobody@example.com")
    assert [a[0] for a in known] == [401, 401, 401, 401, 423, 423, 423]
    assert known == unknown
    assert known_verified == unknown_verified == 5  # one per unlocked attempt, none locked
    # Both paths verified hashes of the same cost (the unknown one a dummy hash).
    assert len({h.split("$")[3] for h in verifications}) == 1


def test_look_alike_spellings_count_as_one_account(client, clock):
    registered(client, "ada@example.com")
    spellings = ["ADA@example.com", "ada@EXAMPLE.COM", fullwidth("ada") + "@example.com"]
    spellings += [" Ada@Example.com ", "ada@" + fullwidth("example") + ".com"]
    statuses = [login(client, email=e, password=WRONG, ip=ATTACKER).status_code for e in spellings]
    assert statuses == [401, 401, 401, 401, 423]


def test_unlock_from_the_cli_and_the_admin_api_is_audited(app, client, runner, clock):
    ada = registered(client)
    result = runner.invoke(
        args=["users", "create-admin", "root@example.com", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    root_id = result.output.rsplit("(", 1)[1].split(")")[0]
    admin = auth_headers(client, "root@example.com", ip=OWNER)

    def lock() -> None:
        for _ in range(5):
            login(client, password=WRONG, ip=ATTACKER)
        assert login(client, ip=ATTACKER).status_code == 423

    lock()
    result = runner.invoke(args=["users", "unlock", "ADA@Example.com"])
    assert result.exit_code == 0, result.output
    assert f"unlocked ada@example.com ({ada['user_id']})" in result.output
    assert login(client, ip=ATTACKER).status_code == 200

    lock()
    response = client.post(f"{API}/admin/users/{ada['user_id']}/unlock", headers=admin)
    assert response.status_code == 200, response.get_json()
    assert (response.get_json()["email"], response.get_json()["locked_until"]) == (
        "ada@example.com",
        None,
    )
    assert login(client, ip=ATTACKER).status_code == 200
    entries = audit(app, "ACCOUNT_UNLOCKED")
    assert [(e.user_id, e.actor_id) for e in entries] == [
        (ada["user_id"], "cli"),
        (ada["user_id"], root_id),
    ]
    assert all(e.details["records_cleared"] >= 1 for e in entries)
    assert_problem(
        client.post(f"{API}/admin/users/usr_01{'0' * 24}/unlock", headers=admin),
        404,
        "user_not_found",
    )


def test_tokens_prune_forgets_throttles_that_no_longer_count(
    app, client, runner, clock, monkeypatch
):
    """Failures of emails nobody has would pile up forever: the daily `tokens prune` drops
    every throttle row that is neither locked nor inside its window, and keeps the rest."""
    registered(client)
    for _ in range(5):
        login(client, email="nobody@example.com", password=WRONG, ip=ATTACKER)
    assert login(client, email="nobody@example.com", ip=ATTACKER).status_code == 423
    login(client, password=WRONG, ip=OWNER)

    def rows() -> int:
        from app.auth.models import LoginThrottle

        with app.app_context(), acting_as(OPERATOR):
            return len(list(get_session().scalars(select(LoginThrottle))))

    before = rows()
    assert before == 4  # (nobody, attacker), (nobody, *), (ada, owner), (ada, *)
    result = runner.invoke(args=["tokens", "prune"])
    assert result.exit_code == 0, result.output
    assert ", 0 stale login throttle(s)" in result.output
    assert rows() == before  # all still count: inside the window, or locked

    clock.advance(24 * 3600)  # a quiet day later
    monkeypatch.setattr("app.auth.accounts.service.utcnow", clock)
    result = runner.invoke(args=["tokens", "prune"])
    assert result.exit_code == 0, result.output
    assert ", 4 stale login throttle(s)" in result.output
    assert rows() == 0
    assert login(client, ip=OWNER).status_code == 200
