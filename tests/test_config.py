"""Settings from the environment; production refuses unsafe ones."""

from __future__ import annotations

import pytest

from app.config import ConfigError, check_production, load_config
from tests.helpers import OTHER_SECRET, STRONG_SECRET


def test_development_defaults(tmp_path):
    config = load_config(tmp_path, env={})
    assert config["APP_ENV"] == "development"
    assert config["DATABASE_URL"] == f"sqlite:///{tmp_path}/app.db"
    assert config["REDIS_URL"] is None
    assert config["OWNERSHIP_GUARD"] == "raise"
    check_production(config)  # not production: no complaint


def test_settings_come_from_the_environment(tmp_path):
    env = {"DATABASE_URL": "postgresql://db/x", "REDIS_URL": "redis://r/0", "DB_POOL_SIZE": "9"}
    config = load_config(tmp_path, env=env)
    assert config["DATABASE_URL"] == "postgresql://db/x"
    assert config["REDIS_URL"] == "redis://r/0"
    assert config["DB_POOL_SIZE"] == 9


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/x", "must be sqlite"),
        ("sqlite://", "must name a SQLite file"),
        ("sqlite:///:memory:", "must name a SQLite file"),
        ("not a url", "not a database URL"),
        # one driver per backend: what the engines, migrations and backups all use
        ("postgresql+psycopg2://db/x", "driver is not supported"),
        ("postgresql+asyncpg://db/x", "driver is not supported"),
        ("sqlite+aiosqlite:///x.db", "driver is not supported"),
    ],
)
def test_unusable_database_urls_are_clear_errors(tmp_path, url, message):
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path, env={"DATABASE_URL": url})


def test_bad_values_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="DB_POOL_SIZE must be an integer"):
        load_config(tmp_path, env={"DB_POOL_SIZE": "many"})
    with pytest.raises(ConfigError, match="APP_ENV must be one of"):
        load_config(tmp_path, env={"APP_ENV": "prod"})


def test_guard_cannot_be_relaxed_outside_production(tmp_path):
    assert load_config(tmp_path, env={"OWNERSHIP_GUARD": "off"})["OWNERSHIP_GUARD"] == "raise"
    env = {"APP_ENV": "production", "OWNERSHIP_GUARD": "log"}
    assert load_config(tmp_path, env=env)["OWNERSHIP_GUARD"] == "log"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SECRET_KEY is not set; JWT_SECRET_KEY is not set; PAYMENT_PROVIDER is the sandbox"),
        ({"PAYMENT_PROVIDER": "stripe"}, "LICENSE_SIGNING_KEYS is not set"),
        ({"SECRET_KEY": STRONG_SECRET}, "JWT_SECRET_KEY is not set"),
        ({"SECRET_KEY": STRONG_SECRET, "JWT_SECRET_KEY": STRONG_SECRET}, "must differ"),
        ({"SECRET_KEY": STRONG_SECRET, "JWT_SECRET_KEY": "y" * 10}, "JWT_SECRET_KEY is shorter"),
    ],
)
def test_production_refuses_missing_or_weak_secrets(tmp_path, env, message):
    config = load_config(tmp_path, env={"APP_ENV": "production", **env})
    with pytest.raises(ConfigError, match=message):
        check_production(config)


def test_production_accepts_real_secrets(tmp_path):
    env = {
        "APP_ENV": "production",
        "SECRET_KEY": STRONG_SECRET,
        "JWT_SECRET_KEY": OTHER_SECRET,
        "LICENSE_SIGNING_KEYS": "/etc/licensing/key.pem",
        "ALLOW_SANDBOX_PAYMENTS": "1",
    }
    check_production(load_config(tmp_path, env=env))


def test_the_schema_layout_needs_postgresql_everywhere(tmp_path):
    pg = "postgresql://db/x"
    assert load_config(tmp_path, env={"DATABASE_URL": pg, "DB_SCHEMAS": "on"})["DB_SCHEMAS"]
    for env in (
        {"DB_SCHEMAS": "on"},  # the SQLite default
        {
            "DATABASE_URL": pg,
            "ADMIN_DATABASE_URL": f"sqlite:///{tmp_path}/a.db",
            "DB_SCHEMAS": "on",
        },
    ):
        with pytest.raises(ConfigError, match="DB_SCHEMAS=on needs PostgreSQL"):
            load_config(tmp_path, env=env)
