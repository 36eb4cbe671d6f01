"""Outages under load, for real: a PostgreSQL server stopped and started again, a Redis
SIGKILLed and restarted, the disk under a SQLite database full. While a dependency is away
the service answers 503 problem+json (or keeps serving, for Redis), never a 500; afterwards
it recovers without a restart, and nothing it acknowledged is lost or half-written."""

from __future__ import annotations

import contextlib
import http.client as http_client
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.admin.models import AuditLog
from app.auth.models import User
from app.kernel import migrations
from tests.conftest import REQUIRE_SERVICES
from tests.helpers import db_rows, db_scalar, free_port, gunicorn_server, http, soak_report

pytestmark = pytest.mark.slow
PASSWORD = "correct horse battery"
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


class PrivateCluster:
    """A PostgreSQL cluster of the test's own (initdb), so it can really be stopped."""

    def __init__(self, root: Path) -> None:
        self.data = root / "pgdata"
        self.port = free_port()
        self.log = root / "pg.log"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)

    def init(self) -> None:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data.parent, "postgres")
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data.parent} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self, mode: str = "immediate") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._as_postgres(
                str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"
            )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def private_cluster(tmp_path):
    if PG_BIN is None or shutil.which("runuser") is None:
        pytest.fail("PostgreSQL server binaries (or runuser) are not installed")
    root = Path(f"/tmp/lic-pg-{os.getpid()}-{time.monotonic_ns()}")
    cluster = PrivateCluster(root)
    cluster.init()
    cluster.start()
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


class Traffic:
    """Clients registering accounts in a loop; every answer is counted, every 201 kept."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.statuses: Counter[int] = Counter()
        self.registered: list[str] = []
        self.bad: list[tuple[int, object]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(3)]

    def _run(self, worker: int) -> None:
        n = 0
        while not self.stop.is_set():
            email = f"load{worker}-{n}@example.com"
            n += 1
            try:
                status, body, headers = http(
                    "POST",
                    self.base + "/api/v1/auth/register",
                    {"email": email, "password": PASSWORD},
                )
            except (OSError, http_client.HTTPException):
                status, body, headers = -1, None, {}
            self.statuses[status] += 1
            if status == 201:
                self.registered.append(email)
            elif (
                status == 503
                and body
                and body.get("code") == "database_unavailable"
                and headers.get("Content-Type", "").startswith("application/problem+json")
            ):
                pass
            else:
                self.bad.append((status, body))
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def wait_for(self, status: int, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        start = self.statuses[status]
        while self.statuses[status] < start + count:
            assert time.monotonic() < deadline, (
                f"no {count} x {status} in {timeout}s: {self.statuses}"
            )
            time.sleep(0.05)


def _registered_and_audited(url: str, emails: list[str]) -> None:
    """Every acknowledged registration exists, and users and their audit entries match."""
    users = db_scalar(url, select(func.count()).select_from(User))
    stored = {r.email for r in db_rows(url, select(User.email))}
    assert set(emails) <= stored
    audited = db_scalar(url, select(func.count()).where(AuditLog.action == "USER_REGISTERED"))
    assert audited == users  # nothing half-written: no user without its entry, or the reverse


def test_postgresql_stopped_and_started_under_load(private_cluster, signing_key_file):
    migrations.upgrade(private_cluster.url)
    env = {"LICENSE_SIGNING_KEYS": signing_key_file, "DB_POOL_TIMEOUT": "2"}
    with gunicorn_server(private_cluster.url, workers=2, **env) as base, Traffic(base) as load:
        load.wait_for(201, 20)
        before = len(load.registered)
        private_cluster.stop("immediate")  # a crash of the database server
        load.wait_for(503, 10)
        status, body, _ = http("GET", base + "/readyz")
        assert status == 503 and body["checks"]["database"] == "unreachable"
        private_cluster.start()
        load.wait_for(201, 20)  # recovered by itself: no restart of the app
    assert not load.bad, load.bad[:5]
    assert load.statuses[503] >= 10 and len(load.registered) >= before + 20
    _registered_and_audited(private_cluster.url, load.registered)
    soak_report(
        "outage: PostgreSQL stopped",
        f"{sum(load.statuses.values())} registrations while the server was stopped and started",
        f"{load.statuses[503]} x 503 problem+json while down, 0 x 500, "
        f"{len(load.registered)} acknowledged and all stored with their audit entries",
    )


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB filesystem of the test's own (tmpfs) to fill up: room for the database and
    a WAL that grows up to its 4 MiB checkpoint under the test's traffic, so that only the
    filler makes it full."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        message = f"cannot mount a tmpfs: {done.stderr.decode().strip()}"
        pytest.fail(message) if REQUIRE_SERVICES else pytest.skip(message)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Fill the disk up. Unbuffered, and ENOSPC taken wherever it comes (the open on a disk
    the database has nearly filled, a write, the close): a full disk is the point."""
    filler = disk / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 65536)
    return filler


def test_a_full_disk_under_sqlite_gives_clear_errors_and_no_half_writes(
    small_disk, sqlite_template, signing_key_file
):
    path = small_disk / "app.db"
    shutil.copy(sqlite_template, path)
    url = f"sqlite:///{path}"
    with gunicorn_server(url, workers=2, LICENSE_SIGNING_KEYS=signing_key_file) as base:
        with Traffic(base) as load:
            load.wait_for(201, 10)
            filler = _fill(small_disk)
            load.wait_for(503, 10)
            filler.unlink(missing_ok=True)  # space again
            load.wait_for(201, 10)
    assert not load.bad, load.bad[:5]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    _registered_and_audited(url, load.registered)
    soak_report(
        "outage: disk full (SQLite)",
        f"{sum(load.statuses.values())} registrations while the disk filled up and emptied",
        f"{load.statuses[503]} x 503 problem+json while full, 0 x 500, integrity_check ok, "
        f"{len(load.registered)} acknowledged and all stored with their audit entries",
    )


def test_redis_killed_and_restarted_under_load(
    database_url, private_redis, signing_key_file, backend
):
    """Rate limits live in Redis; without it they fall back to memory and nothing 500s."""
    env = {
        "LICENSE_SIGNING_KEYS": signing_key_file,
        "REDIS_URL": private_redis.url,
        "RATELIMIT_ENABLED": "true",
        "RATELIMIT_REGISTER_PER_IP": "100000/minute",
        "RATELIMIT_REGISTER_PER_ACCOUNT": "100000/minute",
    }
    with gunicorn_server(database_url, workers=2, **env) as base, Traffic(base) as load:
        load.wait_for(201, 10)
        private_redis.kill()
        load.wait_for(201, 20)
        private_redis.start()
        load.wait_for(201, 20)
        status, body, _ = http("GET", base + "/readyz")
        assert status == 200, body
    assert not load.bad, load.bad[:5]
    assert load.statuses[503] == 0 and load.statuses[-1] == 0
    _registered_and_audited(database_url, load.registered)
    soak_report(
        f"outage: Redis killed ({backend})",
        f"{sum(load.statuses.values())} registrations (rate-limited through Redis) across a "
        "Redis SIGKILL and restart",
        "all answered 201, 0 x 500, limits fell back to memory and came back",
    )
