"""Activation races and read-after-write with real processes (gunicorn, 4 workers)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.admin.models import AuditLog
from app.auth import api as auth_api
from app.auth.models import License
from app.kernel.db import make_sessionmaker, transaction
from app.kernel.engines import make_engine
from app.kernel.ownership import OPERATOR, acting_as
from tests.helpers import (
    db_scalar,
    engine_settings,
    gunicorn_server,
    http,
    sign_up_over_http,
)
from tests.test_auth_processes import _parallel

pytestmark = pytest.mark.slow
N = 12


def _account(base: str, email: str) -> dict[str, str]:
    account = sign_up_over_http(base, email)
    return {**account.headers, "user_id": account.user_id}


def _activate(base: str, who: dict[str, str], client_id: str):
    headers = {"Authorization": who["Authorization"]}
    return http("POST", base + "/api/v1/licenses/activate", {"client_id": client_id}, headers)


def _in_db(url: str, fn):
    engine = make_engine(engine_settings(url))
    try:
        with make_sessionmaker(engine)() as session:
            with transaction(session):
                return fn(session)
    finally:
        engine.dispose()


def test_racing_activations_of_one_client_by_one_user(database_url, signing_key_file):
    with gunicorn_server(database_url, workers=4, LICENSE_SIGNING_KEYS=signing_key_file) as base:
        ada = _account(base, "ada@example.com")
        results = _parallel(lambda: _activate(base, ada, "same-box"))
    statuses = sorted(s for s, _, _ in results)
    assert statuses == [200] * (N - 1) + [201], statuses
    assert len({b["license_id"] for _, b, _ in results}) == 1
    assert db_scalar(database_url, select(func.count()).select_from(License)) == 1
    assert (
        db_scalar(database_url, select(func.count()).where(AuditLog.action == "LICENSE_CREATED"))
        == 1
    )


def test_racing_activations_of_one_client_by_many_users(database_url, signing_key_file):
    with gunicorn_server(database_url, workers=4, LICENSE_SIGNING_KEYS=signing_key_file) as base:
        people = [_account(base, f"p{i}@example.com") for i in range(N)]
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(max_workers=N) as pool:
            results = list(pool.map(lambda who: _activate(base, who, "contested"), people))
    statuses = sorted(s for s, _, _ in results)
    assert statuses == [201] + [409] * (N - 1), statuses
    assert {b["code"] for s, b, _ in results if s == 409} == {"client_id_taken"}
    assert db_scalar(database_url, select(func.count()).select_from(License)) == 1
    assert (
        db_scalar(database_url, select(func.count()).where(AuditLog.action == "LICENSE_CREATED"))
        == 1
    )


def test_racing_activations_never_exceed_the_seats(database_url, signing_key_file):
    """Three users, each racing 12 activations of distinct clients for 3 seats."""
    seats, rounds = 3, 3
    with gunicorn_server(database_url, workers=4, LICENSE_SIGNING_KEYS=signing_key_file) as base:
        for r in range(rounds):
            who = _account(base, f"racer{r}@example.com")
            _in_db(
                database_url,
                lambda s, uid=who["user_id"]: auth_api.grant_subscription(
                    s, uid, plan="pro", seats=seats, period=timedelta(days=30)
                ),
            )
            counter = iter(range(N))
            results = _parallel(
                lambda who=who, r=r, counter=counter: _activate(
                    base, who, f"box-{r}-{next(counter)}"
                )
            )
            statuses = sorted(s for s, _, _ in results)
            assert statuses == [201] * seats + [409] * (N - seats), statuses
            assert {b["code"] for s, b, _ in results if s == 409} == {"seat_limit_reached"}
    assert db_scalar(database_url, select(func.count()).select_from(License)) == seats * rounds
    created = select(func.count()).where(AuditLog.action == "LICENSE_CREATED")
    assert db_scalar(database_url, created) == seats * rounds


def test_read_after_write_across_workers(database_url, signing_key_file):
    with gunicorn_server(database_url, workers=4, LICENSE_SIGNING_KEYS=signing_key_file) as base:
        ada = _account(base, "ada@example.com")
        for i in range(3):
            _, lic, _ = _activate(base, ada, f"raw-{i}")
            # The very next request, on whichever worker: the new license is valid.
            _, verdict, _ = http(
                "POST", base + "/api/v1/licenses/validate", {"token": lic["token"]}
            )
            assert verdict["code"] == "VALID"

            # Suspended by another process a moment ago: no longer valid.
            def suspend(session, license_id=lic["license_id"]):
                with acting_as(OPERATOR):
                    session.execute(
                        update(License)
                        .where(License.license_id == license_id)
                        .values(status="suspended")
                    )

            _in_db(database_url, suspend)
            _, verdict, _ = http(
                "POST", base + "/api/v1/licenses/validate", {"token": lic["token"]}
            )
            assert verdict["code"] == "SUSPENDED"
            _in_db(database_url, lambda s, lid=lic["license_id"]: _revoke(s, lid))


def _revoke(session, license_id):
    with acting_as(OPERATOR):
        session.execute(
            update(License).where(License.license_id == license_id).values(status="revoked")
        )


def test_writers_at_once_all_commit_without_waiting_on_sqlite_retries(
    database_url, signing_key_file, tmp_path
):
    """Activations and paid orders of many accounts at once, from 4 worker processes: every
    one is answered 201 and every license and order is there. On SQLite, writers queue for
    their turn (kernel.db) instead of retrying in SQLite's busy handler, so they succeed
    even when SQLite itself would give up after 1 ms (SQLITE_BUSY_TIMEOUT_MS=1)."""
    import concurrent.futures

    from app.orders.models import Order

    env = {
        "LICENSE_SIGNING_KEYS": signing_key_file,
        "SANDBOX_LEDGER": str(tmp_path / "ledger.jsonl"),
        "SQLITE_BUSY_TIMEOUT_MS": "1",
    }
    with gunicorn_server(database_url, workers=4, **env) as base:
        people = [_account(base, f"w{i}@example.com") for i in range(2 * N)]

        def write(i: int):
            who = people[i]
            if i % 2:
                return _activate(base, who, f"box-{i}")
            headers = {"Authorization": who["Authorization"], "Idempotency-Key": f"order-{i}"}
            body = {"plan": "pro", "payment_token": "tok_ok"}
            return http("POST", base + "/api/v1/orders", body, headers)

        with concurrent.futures.ThreadPoolExecutor(max_workers=2 * N) as pool:
            results = list(pool.map(write, range(2 * N)))
    assert [s for s, _, _ in results] == [201] * (2 * N), results
    assert db_scalar(database_url, select(func.count()).select_from(License)) == N
    paid = select(func.count()).select_from(Order).where(Order.status == "paid")
    assert db_scalar(database_url, paid) == N
