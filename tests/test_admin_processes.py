"""Admin under real concurrency and interruption; index use on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, text

from app.admin.models import AuditLog, AuditLogArchive
from app.kernel.db import make_sessionmaker, transaction, utcnow
from app.kernel.engines import make_engine
from app.kernel.ownership import OPERATOR, acting_as, registry
from tests.helpers import (
    FLASK,
    PASSWORD,
    ROOT,
    db_scalar,
    engine_settings,
    gunicorn_server,
    http,
    login_over_http,
    project_env,
    run_flask,
    sign_up_over_http,
)

pytestmark = pytest.mark.slow


def _cli(database_url: str, *args: str, signing_key: str) -> subprocess.CompletedProcess:
    env = project_env(
        APP_ENV="testing", DATABASE_URL=database_url, LICENSE_SIGNING_KEYS=signing_key
    )
    return run_flask(*args, env=env, input=PASSWORD + "\n")


def test_two_admins_racing_one_patch(database_url, signing_key_file):
    env = {"LICENSE_SIGNING_KEYS": signing_key_file}
    assert (
        _cli(
            database_url,
            "users",
            "create-admin",
            "a1@example.com",
            "--password-stdin",
            signing_key=signing_key_file,
        ).returncode
        == 0
    )
    assert (
        _cli(
            database_url,
            "users",
            "create-admin",
            "a2@example.com",
            "--password-stdin",
            signing_key=signing_key_file,
        ).returncode
        == 0
    )
    with gunicorn_server(database_url, workers=4, **env) as base:
        user = sign_up_over_http(base, "u@example.com")
        _, lic, _ = http(
            "POST", f"{base}/api/v1/licenses/activate", {"client_id": "box"}, user.headers
        )
        admins = []
        for email in ("a1@example.com", "a2@example.com"):
            _, tokens, _ = login_over_http(base, email)
            admins.append({"Authorization": f"Bearer {tokens['access_token']}"})
        url = f"{base}/api/v1/admin/licenses/{lic['license_id']}"
        rounds = 5
        for _ in range(rounds):
            _, _, headers = http("GET", url, None, admins[0])
            etag = headers["ETag"]
            # Both admins suspend the license with the ETag they both read.
            with ThreadPoolExecutor(max_workers=2) as pool:
                results = list(
                    pool.map(
                        lambda who, etag=etag: http(
                            "PATCH", url, {"status": "suspended"}, {**who, "If-Match": etag}
                        ),
                        admins,
                    )
                )
            assert sorted(status for status, _, _ in results) == [200, 412], results
            loser = next(body for status, body, _ in results if status == 412)
            assert loser["code"] == "version_conflict"
            winner_etag = next(h["ETag"] for status, _, h in results if status == 200)
            assert (
                http("PATCH", url, {"status": "active"}, {**admins[0], "If-Match": winner_etag})[0]
                == 200
            )
    changes = select(func.count()).where(AuditLog.action == "LICENSE_STATUS_CHANGED")
    assert db_scalar(database_url, changes) == 2 * rounds  # each accepted change audited once


def _seed_old_audit(url: str, n: int) -> None:
    engine = make_engine(engine_settings(url))
    old = utcnow() - timedelta(days=200)
    rows = [
        {
            "log_id": f"log_old{i:06d}",
            "user_id": "usr_x",
            "actor_id": None,
            "action": "OLD",
            "details": {"i": i},
            "ip_address": None,
            "timestamp": old + timedelta(milliseconds=i),
        }
        for i in range(n)
    ]
    with make_sessionmaker(engine)() as session, acting_as(OPERATOR), transaction(session):
        session.execute(insert(AuditLog), rows)
    engine.dispose()


def test_archive_killed_mid_way_then_rerun_loses_nothing(database_url, signing_key_file):
    n = 2000
    _seed_old_audit(database_url, n)
    env = project_env(
        APP_ENV="testing", DATABASE_URL=database_url, LICENSE_SIGNING_KEYS=signing_key_file
    )
    proc = subprocess.Popen(
        [
            *FLASK,
            "audit",
            "archive",
            "--older-than",
            "90d",
            "--batch-size",
            "100",
            "--pause",
            "0.2",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    archived = select(func.count()).select_from(AuditLogArchive)
    deadline = time.monotonic() + 60
    while db_scalar(database_url, archived) < 300:
        assert time.monotonic() < deadline, "archive made no progress"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-way, possibly mid-batch
    proc.wait()
    moved = db_scalar(database_url, archived)
    left = db_scalar(database_url, select(func.count()).select_from(AuditLog))
    assert 300 <= moved < n
    assert moved + left == n  # each entry in exactly one place, even right after the kill

    result = run_flask(
        "audit", "archive", "--older-than", "90d", "--batch-size", "500", env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert db_scalar(database_url, archived) == n
    assert db_scalar(database_url, select(func.count()).select_from(AuditLog)) == 0
    distinct = select(func.count(func.distinct(AuditLogArchive.log_id)))
    assert db_scalar(database_url, distinct) == n


# --- EXPLAIN on PostgreSQL ------------------------------------------------------------

QUERIES = {
    "users, newest first": "SELECT user_id FROM users ORDER BY created_at DESC, user_id DESC LIMIT 21",
    "users by plan": "SELECT user_id FROM users WHERE plan = 'pro' ORDER BY created_at DESC, user_id DESC LIMIT 21",
    "users by email prefix": "SELECT user_id FROM users WHERE email >= 'ada' AND email < 'adb' LIMIT 21",
    "audit, newest first": "SELECT log_id FROM audit_logs ORDER BY timestamp DESC, log_id DESC LIMIT 21",
    "audit by user": "SELECT log_id FROM audit_logs WHERE user_id = 'usr_x' ORDER BY timestamp DESC, log_id DESC LIMIT 21",
    "audit by action": "SELECT log_id FROM audit_logs WHERE action = 'X' ORDER BY timestamp DESC, log_id DESC LIMIT 21",
    "audit since": "SELECT log_id FROM audit_logs WHERE timestamp >= now() - interval '1 day' ORDER BY timestamp DESC, log_id DESC LIMIT 21",
    "my licenses": "SELECT license_id FROM licenses WHERE user_id = 'usr_x' ORDER BY license_id DESC LIMIT 21",
    "seats in use": "SELECT count(*) FROM licenses WHERE user_id = 'usr_x' AND status = 'active'",
    "live client": "SELECT license_id FROM licenses WHERE client_id = 'c' AND status != 'revoked'",
    "validate": "SELECT status FROM licenses WHERE license_id = 'lic_x'",
}


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("name", sorted(QUERIES))
def test_list_and_search_queries_use_an_index(database_url, name):
    engine = make_engine(engine_settings(database_url))
    try:
        with acting_as(OPERATOR), engine.begin() as conn:
            # Tables are tiny in tests; forbid sequential scans to ask "is there an index
            # that serves this query?" rather than "is a scan cheaper for ten rows?".
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            # The queries name bare tables; in the schema layout they live in module schemas.
            conn.execute(text(f"SET LOCAL search_path TO {', '.join(registry.schemas())}, public"))
            plan = "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + QUERIES[name])))
    finally:
        engine.dispose()
    assert "Index" in plan, plan
    assert "Seq Scan" not in plan, plan
