"""/healthz, /readyz, security headers, and database outages answered with 503."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from app import create_app
from app.kernel import events
from app.kernel.db import get_session, transaction
from app.kernel.models import OutboxEvent
from app.kernel.ownership import KERNEL, acting_as
from tests.helpers import TcpProxy, assert_problem


def _add_probe_routes(application):
    """A read route and a write route that use the database like module routes will."""

    @application.get("/_test/count")
    def count():
        with acting_as(KERNEL):
            return {"count": get_session().scalar(select(func.count()).select_from(OutboxEvent))}

    @application.post("/_test/events")
    def add_event():
        session = get_session()
        with acting_as(KERNEL), transaction(session):
            event_id = events.publish(session, "probe", {})
        return {"event_id": event_id}, 201

    return application


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_when_ready(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {
        "status": "ready",
        "checks": {
            "instance": "ok",
            "signing_keys": "ok",
            "database": "ok",
            "migrations": "ok",
            "layout": "ok",
            "redis": "skipped",
        },
    }


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_readyz_fails_when_the_tables_are_not_where_db_schemas_says(app_config):
    app_config["DB_SCHEMAS"] = not app_config["DB_SCHEMAS"]
    application = create_app(app_config)
    body = assert_problem(application.test_client().get("/readyz"), 503, "not_ready")
    expected = "schemas" if app_config["DB_SCHEMAS"] else "flat"
    assert (
        body["checks"]["layout"]
        == f"{'flat' if expected == 'schemas' else 'schemas'}, expected {expected}"
    )
    application.extensions["db"].dispose()


def test_readyz_reports_migrations_behind(app_config, tmp_path):
    (tmp_path / "empty.db").touch(mode=0o600)  # a database never migrated (only upgrade makes one)
    app_config.update(DATABASE_URL=f"sqlite:///{tmp_path}/empty.db", DB_SCHEMAS=False)
    application = create_app(app_config)
    body = assert_problem(application.test_client().get("/readyz"), 503, "not_ready")
    assert body["checks"]["migrations"] == "behind"
    assert body["checks"]["database"] == "ok"
    application.extensions["db"].dispose()


@pytest.mark.redis
def test_readyz_checks_redis_when_configured(app_config, redis_url):
    app_config["REDIS_URL"] = redis_url
    application = create_app(app_config)
    response = application.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["checks"]["redis"] == "ok"
    application.extensions["db"].dispose()


def test_readyz_fails_when_redis_is_unreachable(app_config):
    app_config["REDIS_URL"] = "redis://127.0.0.1:1/0"
    application = create_app(app_config)
    body = assert_problem(application.test_client().get("/readyz"), 503, "not_ready")
    assert body["checks"]["redis"] == "unreachable"
    application.extensions["db"].dispose()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/nope"])
def test_security_headers_on_every_response(client, path):
    response = client.get(path)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in response.headers


def test_hsts_only_over_https(client):
    response = client.get("/healthz", base_url="https://licensing.test")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgresql_outage_is_503_and_recovers_by_itself(app_config, database_url):
    url = make_url(database_url.replace("postgresql://", "postgresql+psycopg://"))
    proxy = TcpProxy(url.host, url.port or 5432)
    proxy.start()
    app_config["DATABASE_URL"] = url.set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False
    )
    application = _add_probe_routes(create_app(app_config))
    client = application.test_client()
    try:
        assert client.post("/_test/events").status_code == 201
        assert client.get("/_test/count").get_json() == {"count": 1}

        proxy.stop()  # the database is gone: open connections die, new ones are refused
        response = client.get("/_test/count")
        assert_problem(response, 503, "database_unavailable")
        assert response.headers["Retry-After"] == "1"
        assert_problem(client.post("/_test/events"), 503, "database_unavailable")
        body = assert_problem(client.get("/readyz"), 503, "not_ready")
        assert body["checks"]["database"] == "unreachable"
        assert client.get("/healthz").status_code == 200  # the process itself is fine

        proxy.start()  # the database is back; no restart of the app
        assert client.get("/readyz").status_code == 200
        assert client.post("/_test/events").status_code == 201
        assert client.get("/_test/count").get_json() == {"count": 2}
    finally:
        proxy.stop()
        application.extensions["db"].dispose()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sqlite_locked_by_another_writer_is_503_then_recovers(app_config, database_url):
    app_config["SQLITE_BUSY_TIMEOUT_MS"] = 200
    application = _add_probe_routes(create_app(app_config))
    client = application.test_client()
    holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # e.g. a long batch job holding the write lock
        response = client.post("/_test/events")
        assert_problem(response, 503, "database_unavailable")
        assert client.get("/_test/count").get_json() == {"count": 0}  # reads still work (WAL)
        holder.execute("ROLLBACK")
        assert client.post("/_test/events").status_code == 201
        assert client.get("/_test/count").get_json() == {"count": 1}
    finally:
        holder.close()
        application.extensions["db"].dispose()
