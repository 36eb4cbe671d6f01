"""Real nginx in front of real gunicorn: the client's address, not the proxy's, and no
spoofing through X-Forwarded-For. Skipped where nginx is absent (required in CI)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from app.admin.models import AuditLog
from app.kernel.db import make_sessionmaker
from app.kernel.engines import make_engine
from app.kernel.ownership import OPERATOR, acting_as
from tests.helpers import ROOT, engine_settings, gunicorn_server, nginx_call, nginx_in_front_of

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("backend", ["sqlite"], indirect=True)]
PASSWORD = "correct horse battery"


def test_behind_nginx_the_app_sees_the_client_and_ignores_spoofing(database_url, tmp_path):
    env = {
        "TRUSTED_PROXIES": "1",
        "RATELIMIT_ENABLED": "true",
        "RATELIMIT_LOGIN_PER_IP": "3/minute",
        "RATELIMIT_LOGIN_PER_ACCOUNT": "100/minute",
    }
    with (
        # one worker: without Redis each worker keeps its own rate-limit counts
        gunicorn_server(database_url, workers=1, **env) as base,
        nginx_in_front_of(base.removeprefix("http://"), tmp_path) as port,
    ):
        spoof = {"X-Forwarded-For": "203.0.113.66"}
        statuses = [
            nginx_call(
                port,
                "POST",
                "/api/v1/auth/login",
                {"email": f"u{i}@example.com", "password": "wrong!"},
                spoof,
                source="127.0.0.2",
            )[0]
            for i in range(4)
        ]
        # Limited per client address: 127.0.0.2 used its 3; spoofing did not reset it...
        assert statuses == [401, 401, 401, 429]
        # ...and another client behind the same nginx has its own budget.
        assert (
            nginx_call(
                port,
                "POST",
                "/api/v1/auth/login",
                {"email": "v@example.com", "password": "wrong!"},
                spoof,
                source="127.0.0.3",
            )[0]
            == 401
        )

        status, _, headers = nginx_call(port, "GET", "/healthz")
        assert (
            status == 200 and len(headers["X-Request-ID"]) == 32
        )  # nginx's $request_id, passed through

        big = b'{"email": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        assert nginx_call(port, "POST", "/api/v1/auth/register", big)[0] == 413

    engine = make_engine(engine_settings(database_url))
    with make_sessionmaker(engine)() as session, acting_as(OPERATOR):
        ips = [
            e.ip_address
            for e in session.scalars(
                select(AuditLog).where(AuditLog.action == "LOGIN_FAILED").order_by(AuditLog.log_id)
            )
        ]
    engine.dispose()
    assert ips == ["127.0.0.2"] * 3 + [
        "127.0.0.3"
    ]  # the client's address: not nginx's, not the spoof


def test_only_nginx_is_exposed_and_it_keeps_metrics_internal(database_url, tmp_path, monkeypatch):
    """gunicorn listens on loopback unless told otherwise; through nginx, /metrics answers
    127.0.0.1 only (problem+json 403 to anyone else), the public documents everyone."""
    import runpy

    monkeypatch.delenv("HOST", raising=False)  # the default, as `make run` and the docs give it
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    settings = runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))
    assert settings["bind"].startswith("127.0.0.1:")
    with (
        gunicorn_server(database_url, workers=1) as base,
        nginx_in_front_of(base.removeprefix("http://"), tmp_path) as port,
    ):
        status, body, headers = nginx_call(port, "GET", "/metrics", source="127.0.0.2")
        assert status == 403
        assert headers["Content-Type"].startswith("application/problem+json")
        assert json.loads(body)["code"] == "forbidden"
        assert nginx_call(port, "GET", "/metrics")[0] == 200  # the local scraper
        for path in ("/openapi.json", "/healthz", "/.well-known/jwks.json"):
            assert nginx_call(port, "GET", path, source="127.0.0.2")[0] == 200, path
