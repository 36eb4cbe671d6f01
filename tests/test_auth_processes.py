"""Accounts under real concurrency: multi-worker gunicorn, SQLite files and PostgreSQL, Redis."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from app.admin.models import AuditLog
from app.auth.models import User
from tests.helpers import (
    bearer,
    db_scalar,
    gunicorn_server,
    http,
    login_over_http,
    register_over_http,
    sign_up_over_http,
)

pytestmark = pytest.mark.slow
N = 12


def _parallel(fn, n: int = N) -> list:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: fn(), range(n)))


def test_racing_registrations_of_one_email(database_url):
    with gunicorn_server(database_url, workers=4) as base:
        results = _parallel(lambda: register_over_http(base, "race@example.com"))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [201] + [409] * (N - 1), statuses
    assert all(body["code"] == "email_taken" for status, body, _ in results if status == 409)
    assert db_scalar(database_url, select(func.count()).select_from(User)) == 1
    assert (
        db_scalar(database_url, select(func.count()).where(AuditLog.action == "USER_REGISTERED"))
        == 1
    )


def test_racing_uses_of_one_refresh_token(database_url):
    with gunicorn_server(database_url, workers=4) as base:
        auth = bearer(sign_up_over_http(base, "r@example.com").refresh)
        results = _parallel(lambda: http("POST", base + "/api/v1/auth/refresh", None, auth))
        winners = [body for status, body, _ in results if status == 200]
        losers = [body for status, body, _ in results if status != 200]
        # One use spends the token; every other use is reuse and kills the family,
        # including the winner's fresh tokens.
        assert len(winners) == 1
        assert {(b["status"], b["code"]) for b in losers} == {(401, "token_revoked")}
        status, body, _ = http(
            "GET",
            base + "/api/v1/auth/me",
            None,
            {"Authorization": f"Bearer {winners[0]['access_token']}"},
        )
        assert (status, body["code"]) == (401, "token_revoked")
    assert (
        db_scalar(
            database_url, select(func.count()).where(AuditLog.action == "TOKEN_REUSE_DETECTED")
        )
        == 1
    )


def test_concurrent_failures_lock_exactly_once(database_url):
    with gunicorn_server(database_url, workers=4) as base:
        register_over_http(base, "l@example.com")
        results = _parallel(lambda: login_over_http(base, "l@example.com", "wrong password"))
        status, _, _ = login_over_http(base, "l@example.com")
    assert status == 423
    assert {s for s, _, _ in results} <= {401, 423}
    counted = select(func.count()).where(AuditLog.action == "LOGIN_FAILED")
    assert db_scalar(database_url, counted) == 5
    assert (
        db_scalar(database_url, select(func.count()).where(AuditLog.action == "ACCOUNT_LOCKED"))
        == 1
    )


# --- Redis-backed rate limits -------------------------------------------------------


def _login_limit_in(redis, per_account: str) -> dict[str, str]:
    """Server settings: rate limits on, kept in `redis`, logins limited per account."""
    return {
        "REDIS_URL": redis.url,
        "RATELIMIT_ENABLED": "true",
        "RATELIMIT_LOGIN_PER_ACCOUNT": per_account,
    }


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_rate_limit_is_shared_by_all_workers_through_redis(database_url, private_redis):
    env = _login_limit_in(private_redis, "4/minute")
    with gunicorn_server(database_url, workers=3, **env) as base:
        statuses = [login_over_http(base, "s@example.com", "wrong pw")[0] for _ in range(10)]
    # With per-worker memory storage each of the 3 workers would let 4 through.
    assert statuses == [401] * 4 + [429] * 6, statuses


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_redis_dying_mid_run_never_causes_a_5xx(database_url, private_redis):
    env = _login_limit_in(private_redis, "1000/minute")
    with gunicorn_server(database_url, workers=2, **env) as base:
        assert register_over_http(base, "k@example.com")[0] == 201

        def logins(n: int) -> list[int]:
            return [login_over_http(base, "k@example.com")[0] for _ in range(n)]

        statuses = logins(5)
        private_redis.kill()
        statuses += logins(10)
        private_redis.start()  # back, empty (it keeps nothing on disk)
        statuses += logins(5)
    assert statuses == [200] * 20, statuses
