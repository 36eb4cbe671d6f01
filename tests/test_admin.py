"""The admin API on SQLite and PostgreSQL (README: Admin)."""

from __future__ import annotations

import random
import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, insert, select, update

from app.admin.models import AuditLog
from app.admin.readmodels import READ_MODELS
from app.auth import api as auth_api
from app.auth.models import License, User
from app.kernel.db import get_database, get_session, transaction, utcnow
from app.kernel.ownership import OPERATOR, acting_as
from app.models import metadata
from tests.helpers import PASSWORD, as_operator, assert_problem, audit, auth_headers, registered


def account(client, email, *, runner=None, admin=False) -> dict:
    if admin:
        result = runner.invoke(
            args=["users", "create-admin", email, "--password-stdin"], input=PASSWORD + "\n"
        )
        assert result.exit_code == 0, result.output
    else:
        registered(client, email)
    headers = auth_headers(client, email)
    me = client.get("/api/v1/auth/me", headers=headers).get_json()
    return {"user_id": me["user_id"], "headers": headers}


@pytest.fixture
def admin(client, runner):
    return account(client, "root@example.com", runner=runner, admin=True)


@pytest.fixture
def user(client):
    return account(client, "ada@example.com")


def admin_routes(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("admin."):
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                yield (
                    method,
                    rule.rule.replace("<license_id>", "lic_x").replace("<user_id>", "usr_x"),
                )


# --- access --------------------------------------------------------------------------


def test_every_admin_route_needs_an_admin(app, client, admin, user):
    routes = list(admin_routes(app))
    assert len(routes) >= 8
    for method, path in routes:
        anonymous = client.open(path, method=method, json={})
        assert_problem(anonymous, 401)
        as_user = client.open(path, method=method, json={}, headers=user["headers"])
        assert_problem(as_user, 403, "admin_required")
        as_admin = client.open(path, method=method, json={}, headers=admin["headers"])
        assert as_admin.status_code not in (401, 403), (method, path, as_admin.get_json())


def test_a_demoted_admin_is_refused_at_once(app, client, admin):
    assert client.get("/api/v1/admin/stats/users", headers=admin["headers"]).status_code == 200
    as_operator(app, lambda s: s.execute(update(User).values(role="user")))
    assert_problem(client.get("/api/v1/admin/stats/users", headers=admin["headers"]), 403)


def test_read_models_match_the_real_tables():
    for read_model in READ_MODELS:
        real = metadata.tables[read_model.fullname]  # same schema as the real table
        for column in read_model.c:
            assert column.name in real.c, f"{read_model.name}.{column.name} is not a real column"


# --- statistics ----------------------------------------------------------------------


def seed_users(app, n: int, now: datetime) -> list[dict]:
    rng = random.Random(7)
    rows = [
        {
            "user_id": f"usr_seed{i:07d}",
            "email": f"seed{i}@example.com",
            "password_hash": "x",
            "plan": rng.choice(["free", "free", "free", "pro", "enterprise"]),
            "role": "user",
            "failed_logins": 0,
            "created_at": now - timedelta(days=rng.uniform(0, 90)),
            "updated_at": now,
        }
        for i in range(n)
    ]
    as_operator(app, lambda s: s.execute(insert(User), rows))
    return rows


def test_user_stats_on_ten_thousand_users(app, client, admin):
    now = utcnow()
    rows = seed_users(app, 10_000, now)
    response = client.get("/api/v1/admin/stats/users", headers=admin["headers"])
    assert response.status_code == 200
    got = {item["plan"]: item for item in response.get_json()["items"]}

    # Computed independently, in Python, from what was inserted (plus the admin).
    everyone = [*rows, {"plan": "free", "created_at": now}]
    counts = Counter(r["plan"] for r in everyone)
    recent = Counter(r["plan"] for r in everyone if r["created_at"] >= now - timedelta(days=30))
    assert set(got) == set(counts)
    for plan, count in counts.items():
        assert got[plan]["user_count"] == count
        # Rows right at the 30-day edge may fall either side between the seed and the request.
        edge = sum(
            1
            for r in everyone
            if r["plan"] == plan
            and abs(r["created_at"] - (now - timedelta(days=30))) < timedelta(seconds=5)
        )
        assert abs(got[plan]["new_users_30d"] - recent[plan]) <= edge


def test_license_stats(app, client, admin):
    now = utcnow()
    seed_users(app, 20, now)
    statuses = ["active"] * 5 + ["suspended"] * 3 + ["revoked"] * 2
    rows = [
        {
            "license_id": f"lic_seed{i:04d}",
            "user_id": f"usr_seed{i:07d}",
            "client_id": f"c{i}",
            "status": status,
            "created_at": now - timedelta(days=i),
            "updated_at": now,
            "expires_at": now + timedelta(days=365),
            "version": 1,
        }
        for i, status in enumerate(statuses)
    ]
    as_operator(app, lambda s: s.execute(insert(License), rows))
    items = client.get("/api/v1/admin/stats/licenses", headers=admin["headers"]).get_json()["items"]
    by_status = {i["status"]: i for i in items}
    assert {s: by_status[s]["count"] for s in by_status} == {
        "active": 5,
        "suspended": 3,
        "revoked": 2,
    }
    newest = datetime.fromisoformat(by_status["active"]["newest"].replace("Z", "+00:00"))
    oldest = datetime.fromisoformat(by_status["revoked"]["oldest"].replace("Z", "+00:00"))
    assert abs(newest - now) < timedelta(seconds=1)
    assert abs(oldest - (now - timedelta(days=9))) < timedelta(seconds=1)


# --- users ---------------------------------------------------------------------------


def test_user_list_filters_and_pages(app, client, admin):
    now = utcnow()
    rows = seed_users(app, 45, now)
    expected = sorted(
        (r for r in rows if r["plan"] == "pro"),
        key=lambda r: (r["created_at"], r["user_id"]),
        reverse=True,
    )
    seen, cursor = [], None
    while True:
        query = {"plan": "pro", "limit": 4, **({"cursor": cursor} if cursor else {})}
        page = client.get(
            "/api/v1/admin/users", query_string=query, headers=admin["headers"]
        ).get_json()
        seen += [u["user_id"] for u in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [r["user_id"] for r in expected]

    by_prefix = client.get(
        "/api/v1/admin/users", query_string={"email": "SEED1"}, headers=admin["headers"]
    ).get_json()
    assert all(u["email"].startswith("seed1") for u in by_prefix["items"])
    assert len(by_prefix["items"]) == len([r for r in rows if r["email"].startswith("seed1")])
    assert_problem(
        client.get("/api/v1/admin/users?cursor=bogus", headers=admin["headers"]),
        422,
        "invalid_cursor",
    )
    assert_problem(client.get("/api/v1/admin/users?limit=500", headers=admin["headers"]), 422)
    assert_problem(client.get("/api/v1/admin/users?colour=red", headers=admin["headers"]), 422)


def test_user_detail_is_one_join(app, client, admin, user):
    auth_licenses = []
    for cid in ("box-1",):
        auth_licenses.append(
            client.post(
                "/api/v1/licenses/activate", json={"client_id": cid}, headers=user["headers"]
            ).get_json()
        )
    statements: list[str] = []
    with app.app_context():
        engine = get_database().engine
    listener = lambda *a: statements.append(a[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        response = client.get(f"/api/v1/admin/users/{user['user_id']}", headers=admin["headers"])
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert response.status_code == 200
    body = response.get_json()
    assert body["email"] == "ada@example.com"
    assert [lic["license_id"] for lic in body["licenses"]] == [auth_licenses[0]["license_id"]]
    touching_licenses = [s for s in statements if "licenses" in s]
    assert len(touching_licenses) == 1
    assert re.search(r"LEFT OUTER JOIN (\w+\.)?licenses", touching_licenses[0])
    assert_problem(
        client.get("/api/v1/admin/users/usr_nobody", headers=admin["headers"]),
        404,
        "user_not_found",
    )
    no_licenses = client.get(
        f"/api/v1/admin/users/{admin['user_id']}", headers=admin["headers"]
    ).get_json()
    assert no_licenses["licenses"] == []


def test_admin_answers_licenses_in_the_one_license_shape(client, admin, user):
    # A user's licenses in the admin's user detail, one license from the admin, and the
    # owner's own view: one shape.
    lic = client.post(
        "/api/v1/licenses/activate", json={"client_id": "box-1"}, headers=user["headers"]
    ).get_json()
    own = client.get(f"/api/v1/licenses/{lic['license_id']}", headers=user["headers"]).get_json()
    detail = client.get(f"/api/v1/admin/users/{user['user_id']}", headers=admin["headers"])
    one = client.get(f"/api/v1/admin/licenses/{lic['license_id']}", headers=admin["headers"])
    assert detail.get_json()["licenses"] == [own]
    assert one.get_json() == own


# --- audit search --------------------------------------------------------------------


def seed_audit(
    app, n: int, start: datetime, action: str = "SEEDED", user_id: str = "usr_a"
) -> None:
    rows = [
        {
            "log_id": f"log_seed{i:06d}",
            "user_id": user_id if i % 2 else "usr_b",
            "actor_id": None,
            "action": action if i % 3 else "OTHER",
            "details": {"i": i},
            "ip_address": None,
            "timestamp": start + timedelta(seconds=i // 2),
        }  # pairs share a timestamp: ties are real
        for i in range(n)
    ]
    as_operator(app, lambda s: s.execute(insert(AuditLog), rows))


def test_audit_search_filters_newest_first(app, client, admin):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    seed_audit(app, 60, start)
    h = admin["headers"]
    page = client.get(
        "/api/v1/admin/audit-logs",
        query_string={"user_id": "usr_a", "action": "SEEDED", "limit": 100},
        headers=h,
    ).get_json()
    items = page["items"]
    expected = [i for i in range(60) if i % 2 and i % 3]
    assert [e["details"]["i"] for e in items] == sorted(expected, reverse=True)
    assert all(isinstance(e["details"], dict) for e in items)
    window = {
        "since": (start + timedelta(seconds=10)).isoformat(),
        "until": (start + timedelta(seconds=20)).isoformat(),
        "limit": 100,
    }
    in_window = client.get("/api/v1/admin/audit-logs", query_string=window, headers=h).get_json()[
        "items"
    ]
    assert sorted(
        e["details"]["i"] for e in in_window if e["action"] in ("SEEDED", "OTHER")
    ) == list(range(20, 40))
    assert_problem(client.get("/api/v1/admin/audit-logs?since=2026-01-01T00:00:00", headers=h), 422)


def test_audit_pages_stay_stable_while_entries_arrive(app, client, admin):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    seed_audit(app, 50, start)
    h = admin["headers"]
    seen, cursor, extra = [], None, 0
    while True:
        query = {"limit": 7, "action": "SEEDED", **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/admin/audit-logs", query_string=query, headers=h).get_json()
        seen += [e["log_id"] for e in page["items"]]
        cursor = page["next_cursor"]
        # New entries keep arriving between pages (newer than everything seen).
        with app.app_context():
            from app.admin import api as admin_api

            session = get_session()
            with transaction(session):
                admin_api.record_audit(session, "SEEDED", details={"late": extra})
            extra += 1
        if not cursor:
            break
    originals = [f"log_seed{i:06d}" for i in range(50) if i % 3]
    assert sorted(s for s in seen if s.startswith("log_seed")) == sorted(originals)
    assert len(seen) == len(set(seen))  # nothing twice


# --- license administration ----------------------------------------------------------


def test_get_patch_with_etags(app, client, admin, user):
    lic = client.post(
        "/api/v1/licenses/activate", json={"client_id": "box"}, headers=user["headers"]
    ).get_json()
    url = f"/api/v1/admin/licenses/{lic['license_id']}"
    h = admin["headers"]
    got = client.get(url, headers=h)
    assert got.headers["ETag"] == '"1"'
    assert_problem(
        client.patch(url, json={"status": "suspended"}, headers=h), 428, "precondition_required"
    )
    assert_problem(
        client.patch(url, json={"status": "suspended"}, headers={**h, "If-Match": "*"}), 428
    )
    changed = client.patch(url, json={"status": "suspended"}, headers={**h, "If-Match": '"1"'})
    assert changed.status_code == 200
    assert changed.headers["ETag"] == '"2"'
    assert changed.get_json()["status"] == "suspended"
    stale = client.patch(url, json={"status": "active"}, headers={**h, "If-Match": '"1"'})
    assert_problem(stale, 412, "version_conflict")
    assert (
        client.post("/api/v1/licenses/validate", json={"token": lic["token"]}).get_json()["code"]
        == "SUSPENDED"
    )
    [entry] = audit(app, "LICENSE_STATUS_CHANGED")
    details = entry.details
    assert (details["old_status"], details["new_status"], entry.actor_id) == (
        "active",
        "suspended",
        admin["user_id"],
    )

    revoked = client.patch(url, json={"status": "revoked"}, headers={**h, "If-Match": '"2"'})
    assert revoked.headers["ETag"] == '"3"'
    final = client.patch(url, json={"status": "active"}, headers={**h, "If-Match": '"3"'})
    body = assert_problem(final, 409, "invalid_transition")
    assert "revoked" in body["detail"] and "final" in body["detail"]
    assert_problem(
        client.patch(url, json={"status": "deleted"}, headers={**h, "If-Match": '"3"'}), 422
    )
    assert_problem(
        client.get("/api/v1/admin/licenses/lic_nope", headers=h), 404, "license_not_found"
    )
    assert_problem(
        client.patch(
            "/api/v1/admin/licenses/lic_nope",
            json={"status": "active"},
            headers={**h, "If-Match": '"1"'},
        ),
        404,
    )


def _licenses(app, client, user, n):
    with app.app_context():
        session = get_session()
        with transaction(session):
            auth_api.grant_subscription(
                session, user["user_id"], plan="pro", seats=n, period=timedelta(days=30)
            )
    return [
        client.post(
            "/api/v1/licenses/activate", json={"client_id": f"b{i}"}, headers=user["headers"]
        ).get_json()["license_id"]
        for i in range(n)
    ]


def _statuses(app):
    with app.app_context(), acting_as(OPERATOR):
        return dict(get_session().execute(select(License.license_id, License.status)).all())


def test_batch_status_is_all_or_nothing(app, client, admin, user):
    ids = _licenses(app, client, user, 3)
    h = admin["headers"]
    bad = {
        "updates": [{"license_id": i, "status": "suspended"} for i in ids]
        + [{"license_id": "lic_unknown", "status": "suspended"}]
    }
    body = assert_problem(
        client.post("/api/v1/admin/licenses/batch-status", json=bad, headers=h),
        404,
        "license_not_found",
    )
    assert body["license_id"] == "lic_unknown"
    assert set(_statuses(app).values()) == {"active"}
    assert audit(app, "LICENSE_STATUS_CHANGED") == []

    stale = {"updates": [{"license_id": ids[0], "status": "suspended", "version": 99}]}
    assert_problem(client.post("/api/v1/admin/licenses/batch-status", json=stale, headers=h), 412)
    twice = {"updates": [{"license_id": ids[0], "status": "suspended"}] * 2}
    assert_problem(client.post("/api/v1/admin/licenses/batch-status", json=twice, headers=h), 409)
    too_many = {"updates": [{"license_id": f"lic_{i}", "status": "revoked"} for i in range(1001)]}
    assert_problem(
        client.post("/api/v1/admin/licenses/batch-status", json=too_many, headers=h), 422
    )

    good = {"updates": [{"license_id": i, "status": "suspended"} for i in ids]}
    response = client.post("/api/v1/admin/licenses/batch-status", json=good, headers=h)
    assert response.status_code == 200
    assert {item["status"] for item in response.get_json()["items"]} == {"suspended"}
    assert set(_statuses(app).values()) == {"suspended"}
    assert len(audit(app, "LICENSE_STATUS_CHANGED")) == 3


def test_a_thousand_updates_in_one_batch(app, client, admin):
    now = utcnow()
    seed_users(app, 1, now)
    rows = [
        {
            "license_id": f"lic_bulk{i:05d}",
            "user_id": "usr_seed0000000",
            "client_id": f"bulk-{i}",
            "status": "active",
            "created_at": now,
            "updated_at": now,
            "expires_at": now + timedelta(days=1),
            "version": 1,
        }
        for i in range(1000)
    ]
    as_operator(app, lambda s: s.execute(insert(License), rows))
    payload = {"updates": [{"license_id": r["license_id"], "status": "suspended"} for r in rows]}
    response = client.post(
        "/api/v1/admin/licenses/batch-status", json=payload, headers=admin["headers"]
    )
    assert response.status_code == 200
    assert Counter(_statuses(app).values()) == {"suspended": 1000}


# --- archive -------------------------------------------------------------------------


def test_archive_moves_old_entries_once(app, runner):
    old = utcnow() - timedelta(days=120)
    seed_audit(app, 30, old)
    with app.app_context():
        from app.admin import api as admin_api

        session = get_session()
        with transaction(session):
            admin_api.record_audit(session, "RECENT")
    result = runner.invoke(args=["audit", "archive", "--older-than", "90d", "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    assert "archived 30 audit entries" in result.output
    with app.app_context(), acting_as(OPERATOR):
        session = get_session()
        from app.admin.models import AuditLogArchive

        assert session.scalar(select(func.count()).select_from(AuditLogArchive)) == 30
        assert [a for (a,) in session.execute(select(AuditLog.action))] == ["RECENT"]
        archived = session.get(AuditLogArchive, "log_seed000004")
        assert archived.details == {"i": 4} and archived.archived_at is not None
    again = runner.invoke(args=["audit", "archive", "--older-than", "90d"])
    assert "archived 0 audit entries" in again.output
    assert_bad = runner.invoke(args=["audit", "archive", "--older-than", "ninety"])
    assert assert_bad.exit_code == 2


def test_openapi_describes_admin_routes(client):
    spec = client.get("/openapi.json").get_json()
    patch = spec["paths"]["/api/v1/admin/licenses/{license_id}"]["patch"]
    assert {"412", "428", "409"} <= set(patch["responses"])
    assert patch["security"] == [{"BearerAuth": []}]


def test_options_requests_on_admin_routes_are_not_errors(client):
    """Found by schemathesis: OPTIONS skipped the JWT check and then crashed with a 500."""
    for path in ("/api/v1/admin/stats/users", "/api/v1/admin/licenses/lic_x"):
        response = client.options(path)
        assert response.status_code == 200
        assert "GET" in response.headers["Allow"]
