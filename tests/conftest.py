"""Fixtures: an app per backend (SQLite always; PostgreSQL and Redis when reachable).

With REQUIRE_SERVICES=1 (CI), an unreachable PostgreSQL or Redis fails the run instead of
skipping its tests. PostgreSQL tests use a throwaway database created for this run and
dropped at the end.

The run has an instance folder of its own (INSTANCE_PATH, inherited by every app and child
process the tests start), so the secrets and keys generated there never touch the
repository's instance/ folder.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from app import create_app
from app.kernel import migrations
from app.models import metadata
from tests.helpers import PG_SCHEMAS, layout_config

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _redis_url_of_this_worker(url: str) -> str:
    """Each pytest-xdist worker (gw0, gw1, …) on a Redis database of its own, counting down
    from the one given: some tests clear the rate-limit counters they are about to count."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    base, _, db = url.rpartition("/")
    if not worker.startswith("gw") or not db.isdigit():
        return url
    return f"{base}/{(int(db) - int(worker[2:])) % 16}"


REDIS_URL = _redis_url_of_this_worker(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        import tempfile

        # Hypothesis (under schemathesis) keeps its example database and caches in the
        # current directory, the work tree: the run's by-products go to a folder of its own.
        folder = tempfile.mkdtemp(prefix="licensing-test-hypothesis-")
        os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = folder
        config._test_hypothesis_path = folder  # type: ignore[attr-defined]
    if not os.environ.get("INSTANCE_PATH"):
        import tempfile

        from app import SECRET_FILES
        from app.kernel import files

        folder = tempfile.mkdtemp(prefix="licensing-test-instance-")
        os.environ["INSTANCE_PATH"] = folder
        config._test_instance_path = folder  # type: ignore[attr-defined]
        # Generated now, so that no test's first command is the one that says so.
        for name in SECRET_FILES.values():
            files.instance_secret(folder, name)


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = getattr(config, "_test_hypothesis_path", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("HYPOTHESIS_STORAGE_DIRECTORY", None)
    folder = getattr(config, "_test_instance_path", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("INSTANCE_PATH", None)


def service_unavailable(what: str, why: object) -> None:
    """Skip, or fail when the run requires the service (REQUIRE_SERVICES=1)."""
    message = f"{what} unreachable: {why}"
    if REQUIRE_SERVICES:
        pytest.fail(f"REQUIRE_SERVICES=1 but {message}", pytrace=False)
    pytest.skip(message)


def pg_url(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def create_pg_database(prefix: str = "lic_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        service_unavailable("PostgreSQL", exc)
    return name


def drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that runs on PostgreSQL `postgres`, so the schema pass can pick them
    (`pytest -m postgres`): the backend parameters and the PostgreSQL fixtures."""
    pg_fixtures = {"pg_migrated_url", "fresh_pg_url"}
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "postgresql" in params.values() or pg_fixtures & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_migrated_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for this run, migrated to head."""
    name = create_pg_database()
    url = pg_url(name)
    try:
        migrations.upgrade(url, schemas=PG_SCHEMAS)
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """An empty throwaway PostgreSQL database for one test (not migrated)."""
    name = create_pg_database("lic_fresh")
    try:
        yield pg_url(name)
    finally:
        drop_pg_database(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


def _truncate_all(url: str) -> None:
    from app.kernel.engines import EngineSettings, make_engine

    engine = make_engine(EngineSettings(url=url, guard_mode="off", pool_size=1, max_overflow=0))
    layout = migrations.SCHEMAS if PG_SCHEMAS else migrations.FLAT
    try:
        with engine.begin() as conn:
            names = ", ".join(
                migrations.qualified_name(conn, t.name, layout) for t in metadata.sorted_tables
            )
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated database on the test's backend, empty at the start of the test."""
    if backend == "sqlite":
        path = tmp_path / "app.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("pg_migrated_url")
    yield url
    _truncate_all(url)


@pytest.fixture(scope="session")
def signing_key_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An Ed25519 license signing key for the run (kept out of the repo's instance/)."""
    from app.auth.licensing.signing import generate_key_file

    path = tmp_path_factory.mktemp("keys") / "license-key.pem"
    generate_key_file(path)
    return str(path)


@pytest.fixture
def app_config(database_url: str, tmp_path: Path, signing_key_file: str) -> dict[str, object]:
    return {
        "LICENSE_SIGNING_KEYS": signing_key_file,
        "APP_ENV": "testing",
        "TESTING": True,
        "DATABASE_URL": database_url,
        **layout_config(database_url),
        "REDIS_URL": None,
        "BACKUP_DIR": str(tmp_path / "backups"),
        "SANDBOX_LEDGER": str(tmp_path / "sandbox-ledger.jsonl"),
        # Cheap hashing keeps the suite fast; tests of the real cost set it back.
        "ARGON2_TIME_COST": 1,
        "ARGON2_MEMORY_COST": 1024,
        # Rate limits are switched on by the tests that are about them.
        "RATELIMIT_ENABLED": False,
    }


@pytest.fixture
def app(app_config: dict[str, object]):
    application = create_app(app_config)
    yield application
    application.extensions["db"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_unavailable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def private_redis(redis_url):  # redis_url: skip/fail like the other Redis tests
    """A redis-server of the test's own, on a free port: it can really be killed."""
    from tests.helpers import RedisServer

    server = RedisServer()
    server.start()
    yield server
    server.kill()


@pytest.fixture
def role_prefix(roles_database_url: str) -> Iterator[str]:
    """Roles are cluster-wide: a prefix of the test's own, and every role with it dropped
    afterwards (with what it owns and was granted in `roles_database_url`, which each test
    module defines)."""
    prefix = f"lt_{uuid.uuid4().hex[:8]}_"
    yield prefix
    url = roles_database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        roles = [
            r[0]
            for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (prefix + "%",)
            )
        ]
        for role in roles:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
