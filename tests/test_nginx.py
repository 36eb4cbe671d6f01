"""Real nginx in front of real gunicorn: the client's address, not the proxy's, and no
spoofing through X-Forwarded-For. Skipped where nginx is absent (required in CI)."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from app.admin.models import AuditLog
from app.kernel.db import make_engine, make_sessionmaker
from app.kernel.ownership import OPERATOR, acting_as
from tests.conftest import service_unavailable
from tests.helpers import ROOT, engine_settings, free_port, gunicorn_server

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("backend", ["sqlite"], indirect=True)]
PASSWORD = "correct horse battery"


@contextlib.contextmanager
def nginx_in_front_of(upstream: str, tmp_path: Path):
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        service_unavailable("nginx", "not installed")
    port = free_port()
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    for old, new in {
        "listen 80;": f"listen 127.0.0.1:{port};",
        "server 127.0.0.1:8000;": f"server {upstream};",
        "pid /run/nginx-licensing.pid;": f"pid {tmp_path}/nginx.pid;",
        "/var/log/nginx/licensing-error.log": f"{tmp_path}/error.log",
        "/var/log/nginx/licensing-access.log": f"{tmp_path}/access.log",
        "http {": f"http {{\n    client_body_temp_path {tmp_path}/body;\n    proxy_temp_path {tmp_path}/proxy;",
    }.items():
        assert old in conf, old
        conf = conf.replace(old, new)
    (tmp_path / "nginx.conf").write_text(conf)
    subprocess.run(
        [binary, "-t", "-c", str(tmp_path / "nginx.conf")], check=True, capture_output=True
    )
    proc = subprocess.Popen(
        [binary, "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/healthz")
                break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def call(port: int, method: str, path: str, body=None, headers=None, source="127.0.0.1"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    payload = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(
        method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})}
    )
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data, dict(response.getheaders())


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
            call(
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
            call(
                port,
                "POST",
                "/api/v1/auth/login",
                {"email": "v@example.com", "password": "wrong!"},
                spoof,
                source="127.0.0.3",
            )[0]
            == 401
        )

        status, _, headers = call(port, "GET", "/healthz")
        assert (
            status == 200 and len(headers["X-Request-ID"]) == 32
        )  # nginx's $request_id, passed through

        big = b'{"email": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        assert call(port, "POST", "/api/v1/auth/register", big)[0] == 413

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
