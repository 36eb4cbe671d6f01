"""Typed settings (app.settings): every variable read, its default unchanged, and every bad
value refused when the app is built — one line naming it, from create_app, the flask CLI
and gunicorn alike."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from app import create_app
from app.auth.api import SigningKeyError
from app.config import ConfigError, load_config
from app.settings import current_settings, load_settings, setting_fields, settings_of
from app.settings.values import env_name
from tests.helpers import OTHER_SECRET, STRONG_SECRET, free_port, project_env, run_flask
from tests.test_startup import _gunicorn_exits, _port_is_free

NAMES = [env_name(field) for _, field in setting_fields()]

# load_config's output before the settings were typed (instance folder /srv/instance).
DEFAULTS = {
    "ALLOW_SANDBOX_PAYMENTS": False,
    "APP_ENV": "development",
    "ARGON2_MEMORY_COST": 19456,
    "ARGON2_PARALLELISM": 1,
    "ARGON2_TIME_COST": 2,
    "BACKUP_DIR": "/srv/instance/backups",
    "DATABASE_URL": "sqlite:////srv/instance/app.db",
    "DB_APPLICATION_NAME": "licensing",
    "DB_MAX_OVERFLOW": 5,
    "DB_POOL_RECYCLE": 1800,
    "DB_POOL_SIZE": 5,
    "DB_POOL_TIMEOUT": 10,
    "DB_ROLES": False,
    "DB_ROLE_PREFIX": "licensing_",
    "DB_SCHEMAS": False,
    "DB_STATEMENT_TIMEOUT_MS": 15000,
    "JWKS_MAX_AGE": 300,
    "JWT_ACCESS_TOKEN_EXPIRES": timedelta(seconds=900),
    "JWT_REFRESH_TOKEN_EXPIRES": timedelta(days=30),
    "CONSOLE_SESSION_TTL": timedelta(hours=12),
    "JWT_SECRET_KEY": None,
    "LICENSE_SIGNING_KEYS": None,
    "LICENSE_TOKEN_TTL": timedelta(days=30),
    "LOGIN_ACCOUNT_MAX_FAILURES": 50,
    "LOGIN_FAILURE_WINDOW": timedelta(minutes=15),
    "LOGIN_FIRST_LOCK": timedelta(seconds=60),
    "LOGIN_LOCK_DURATION": timedelta(minutes=30),
    "LOGIN_MAX_FAILURES": 5,
    "LOG_FORMAT": "text",
    "LOG_LEVEL": "INFO",
    "MAX_CONTENT_LENGTH": 1048576,
    "MODULE_DATABASE_URLS": {},
    "ORDER_LEASE": timedelta(seconds=60),
    "OUTBOX_BATCH_SIZE": 200,
    "OUTBOX_LEASE_SECONDS": 15,
    "WEBHOOKS_ALLOW_PRIVATE": False,
    "WEBHOOKS_ENCRYPTION_KEY": None,
    "WEBHOOKS_TIMEOUT_SECONDS": 15,
    "OUTBOX_STREAM": "licensing:events",
    "OWNERSHIP_GUARD": "raise",
    "PAYMENT_PROVIDER": "sandbox",
    "PLANS_JSON": None,
    "RATELIMIT_ACTIVATE_PER_ACCOUNT": "30/minute",
    "RATELIMIT_ACTIVATE_PER_IP": "60/minute",
    "RATELIMIT_ENABLED": True,
    "RATELIMIT_KEY_PREFIX": "licensing",
    "RATELIMIT_LOGIN_PER_ACCOUNT": "10/minute",
    "RATELIMIT_LOGIN_PER_IP": "30/minute;300/hour",
    "RATELIMIT_REFRESH_PER_ACCOUNT": "20/minute",
    "RATELIMIT_REFRESH_PER_IP": "60/minute",
    "RATELIMIT_REGISTER_PER_ACCOUNT": "5/minute",
    "RATELIMIT_REGISTER_PER_IP": "10/minute;100/hour",
    "RATELIMIT_VALIDATE_PER_IP": "1200/minute",
    "RATELIMIT_VALIDATE_PER_TOKEN": "120/minute",
    "REDIS_URL": None,
    "RENEWAL_GRACE": timedelta(days=7),
    "RENEWAL_LEAD": timedelta(hours=2),
    "SANDBOX_LATENCY_MS": 0,
    "SANDBOX_LEDGER": "/srv/instance/sandbox-ledger.jsonl",
    "SECRET_KEY": None,
    "SQLITE_BUSY_TIMEOUT_MS": 5000,
    "SQL_ECHO": False,
    "TESTING": False,
    "TRUSTED_PROXIES": 0,
    "TRUSTED_PROXY_ADDRESSES": "127.0.0.1,::1",
}

PLAN = (
    '[{"plan": "team", "seats": 2, "max_seats": 9, "price_cents": 500, "currency": "EUR",'
    ' "period_days": 30}]'
)

# A value each variable may take that is not its default: it must reach the configuration.
GOOD = {
    "APP_ENV": "testing",
    "INSTANCE_PATH": "/srv/elsewhere",
    "LOG_LEVEL": "debug",
    "LOG_FORMAT": "json",
    "MAX_CONTENT_LENGTH": "2048",
    "TRUSTED_PROXIES": "1",
    "TRUSTED_PROXY_ADDRESSES": "10.0.0.0/8",
    "DATABASE_URL": "postgresql://db/licensing",
    "ADMIN_DATABASE_URL": "postgresql://db/admin",
    "DB_APPLICATION_NAME": "licensing-eu",
    "DB_POOL_SIZE": "9",
    "DB_MAX_OVERFLOW": "0",
    "DB_POOL_TIMEOUT": "3",
    "DB_POOL_RECYCLE": "60",
    "DB_STATEMENT_TIMEOUT_MS": "100",
    "SQLITE_BUSY_TIMEOUT_MS": "100",
    "SQL_ECHO": "yes",
    "DB_SCHEMAS": "on",
    "DB_ROLES": "true",
    "DB_ROLE_PREFIX": "lic_",
    "OWNERSHIP_GUARD": "log",
    "REDIS_URL": "redis://cache:6379/1",
    "OUTBOX_STREAM": "events",
    "OUTBOX_BATCH_SIZE": "10",
    "OUTBOX_LEASE_SECONDS": "5",
    "WEBHOOKS_ALLOW_PRIVATE": "1",
    "WEBHOOKS_ENCRYPTION_KEY": "u8l4pVlmxqs2TlYyUhpsmOvYBNnXUGtH0KGkZfk-gcM=",
    "WEBHOOKS_TIMEOUT_SECONDS": "30",
    "SECRET_KEY": STRONG_SECRET,
    "JWT_SECRET_KEY": OTHER_SECRET,
    "JWT_ACCESS_TTL_SECONDS": "60",
    "JWT_REFRESH_TTL_SECONDS": "3600",
    "CONSOLE_SESSION_HOURS": "24",
    "ARGON2_TIME_COST": "3",
    "ARGON2_MEMORY_COST": "65536",
    "ARGON2_PARALLELISM": "2",
    "LOGIN_MAX_FAILURES": "3",
    "LOGIN_ACCOUNT_MAX_FAILURES": "30",
    "LOGIN_FAILURE_WINDOW_MINUTES": "5",
    "LOGIN_LOCK_SECONDS": "30",
    "LOGIN_LOCK_MINUTES": "60",
    "RATELIMIT_ENABLED": "off",
    "RATELIMIT_KEY_PREFIX": "eu",
    **{name: "7/second" for name in NAMES if "_PER_" in name},
    "LICENSE_SIGNING_KEYS": "/etc/licensing/a.pem,/etc/licensing/b.pem",
    "JWKS_MAX_AGE": "60",
    "LICENSE_TOKEN_TTL_DAYS": "7",
    "PLANS_JSON": PLAN,
    "PAYMENT_PROVIDER": "recording",
    "ALLOW_SANDBOX_PAYMENTS": "1",
    "SANDBOX_LEDGER": "/srv/ledger.jsonl",
    "SANDBOX_LATENCY_MS": "5",
    "ORDER_LEASE_SECONDS": "30",
    "RENEWAL_GRACE_DAYS": "3",
    "RENEWAL_LEAD_HOURS": "6",
    "BACKUP_DIR": "/srv/backups",
    "HOST": "::",
    "PORT": "8080",
    "WEB_CONCURRENCY": "4",
    "GUNICORN_TIMEOUT": "60",
    "GUNICORN_MAX_REQUESTS": "0",
    "GUNICORN_PIDFILE": "/run/licensing.pid",
    "GUNICORN_ACCESS_LOG": "-",
    "GUNICORN_ERROR_LOG": "/var/log/licensing.log",
    "FORWARDED_ALLOW_IPS": "*",
}
# Refused whatever they say (only admin may have a database of its own).
REFUSED = {"AUTH_DATABASE_URL", "ORDERS_DATABASE_URL"}
# Variables that do not reach app.config as themselves: gunicorn's, and the instance folder
# (Flask's app.instance_path).
SERVER = {"HOST", "PORT", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"}
NOT_IN_APP_CONFIG = {"INSTANCE_PATH", *SERVER, *(n for n in NAMES if n.startswith("GUNICORN_"))}

# A bad value for every variable, and what the one-line error says about it.
BAD = {
    "APP_ENV": ("prod", "APP_ENV must be one of development, production or testing"),
    "INSTANCE_PATH": ("/proc/licensing-x", "cannot be made private"),
    "LOG_LEVEL": ("loud", "LOG_LEVEL must be one of DEBUG, INFO"),
    "LOG_FORMAT": ("xml", "LOG_FORMAT must be one of json or text"),
    "MAX_CONTENT_LENGTH": ("1e6", "MAX_CONTENT_LENGTH must be an integer, got '1e6'"),
    "TRUSTED_PROXIES": ("-1", "TRUSTED_PROXIES must be at least 0"),
    "TRUSTED_PROXY_ADDRESSES": ("127.0.0.1,nginx", "'nginx' is not one"),
    "DATABASE_URL": ("mysql://db/x", "DATABASE_URL must be sqlite:///… or postgresql://…"),
    "ADMIN_DATABASE_URL": ("sqlite://", "ADMIN_DATABASE_URL must name a SQLite file"),
    "AUTH_DATABASE_URL": ("sqlite:////srv/auth.db", "only admin can run on its own database"),
    "ORDERS_DATABASE_URL": ("sqlite:////srv/o.db", "only admin can run on its own database"),
    "DB_APPLICATION_NAME": ("x" * 201, "DB_APPLICATION_NAME must be at most 200 characters"),
    "DB_POOL_SIZE": ("many", "DB_POOL_SIZE must be an integer, got 'many'"),
    "DB_MAX_OVERFLOW": ("-1", "DB_MAX_OVERFLOW must be at least 0"),
    "DB_POOL_TIMEOUT": ("0", "DB_POOL_TIMEOUT must be at least 1"),
    "DB_POOL_RECYCLE": ("never", "DB_POOL_RECYCLE must be an integer"),
    "DB_STATEMENT_TIMEOUT_MS": ("9999999999", "DB_STATEMENT_TIMEOUT_MS must be at most"),
    "SQLITE_BUSY_TIMEOUT_MS": ("5s", "SQLITE_BUSY_TIMEOUT_MS must be an integer"),
    "SQL_ECHO": ("loud", "SQL_ECHO must be true or false"),
    "DB_SCHEMAS": ("maybe", "DB_SCHEMAS must be true or false"),
    "DB_ROLES": ("2", "DB_ROLES must be true or false"),
    "DB_ROLE_PREFIX": ("lic'; drop", "DB_ROLE_PREFIX must match"),
    "OWNERSHIP_GUARD": ("warn", "OWNERSHIP_GUARD must be one of raise, log or off"),
    "REDIS_URL": ("localhost:6379", "REDIS_URL must be redis://…"),
    "OUTBOX_STREAM": ("   ", "OUTBOX_STREAM must not be empty"),
    "OUTBOX_BATCH_SIZE": ("0", "OUTBOX_BATCH_SIZE must be at least 1"),
    "OUTBOX_LEASE_SECONDS": ("1.5", "OUTBOX_LEASE_SECONDS must be an integer"),
    "WEBHOOKS_ALLOW_PRIVATE": ("maybe", "WEBHOOKS_ALLOW_PRIVATE"),
    "WEBHOOKS_ENCRYPTION_KEY": ("not-a-key", "WEBHOOKS_ENCRYPTION_KEY must be a Fernet key"),
    "WEBHOOKS_TIMEOUT_SECONDS": ("0", "WEBHOOKS_TIMEOUT_SECONDS"),
    "SECRET_KEY": ("short", "SECRET_KEY is shorter than 32 characters"),
    "JWT_SECRET_KEY": ("changeme" * 8, "JWT_SECRET_KEY is guessable"),
    "JWT_ACCESS_TTL_SECONDS": ("15m", "JWT_ACCESS_TTL_SECONDS must be a whole number of seconds"),
    "JWT_REFRESH_TTL_SECONDS": ("0", "JWT_REFRESH_TTL_SECONDS must be between 1 and"),
    "CONSOLE_SESSION_HOURS": ("0", "CONSOLE_SESSION_HOURS must be between 1 and"),
    "ARGON2_TIME_COST": ("0", "ARGON2_TIME_COST must be at least 1"),
    "ARGON2_MEMORY_COST": ("19 MiB", "ARGON2_MEMORY_COST must be an integer"),
    "ARGON2_PARALLELISM": ("0", "ARGON2_PARALLELISM must be at least 1"),
    "LOGIN_MAX_FAILURES": ("0", "LOGIN_MAX_FAILURES must be at least 1"),
    "LOGIN_ACCOUNT_MAX_FAILURES": ("lots", "LOGIN_ACCOUNT_MAX_FAILURES must be an integer"),
    "LOGIN_FAILURE_WINDOW_MINUTES": ("-5", "LOGIN_FAILURE_WINDOW_MINUTES must be between 1"),
    "LOGIN_LOCK_SECONDS": ("1min", "LOGIN_LOCK_SECONDS must be a whole number of seconds"),
    "LOGIN_LOCK_MINUTES": ("9" * 30, "LOGIN_LOCK_MINUTES must be between 1"),
    "RATELIMIT_ENABLED": ("sometimes", "RATELIMIT_ENABLED must be true or false"),
    "RATELIMIT_KEY_PREFIX": (" ", "RATELIMIT_KEY_PREFIX must not be empty"),
    **{name: ("lots", f"{name} is not a rate limit") for name in NAMES if "_PER_" in name},
    # Read at start in production; elsewhere /readyz names an unreadable key (test_startup).
    "LICENSE_SIGNING_KEYS": ("/nowhere/key.pem", "cannot read license signing key"),
    "JWKS_MAX_AGE": ("-1", "JWKS_MAX_AGE must be at least 0"),
    "LICENSE_TOKEN_TTL_DAYS": ("99999999999", "LICENSE_TOKEN_TTL_DAYS must be between 1 and"),
    "PLANS_JSON": ("{bad", "PLANS_JSON is not a list of plans"),
    "PAYMENT_PROVIDER": ("stripe", "unknown PAYMENT_PROVIDER 'stripe'"),
    "ALLOW_SANDBOX_PAYMENTS": ("please", "ALLOW_SANDBOX_PAYMENTS must be true or false"),
    "SANDBOX_LEDGER": ("/tmp", "SANDBOX_LEDGER must name a file, but /tmp is a folder"),
    "SANDBOX_LATENCY_MS": ("600000", "SANDBOX_LATENCY_MS must be at most 60,000"),
    "ORDER_LEASE_SECONDS": ("1m", "ORDER_LEASE_SECONDS must be a whole number of seconds"),
    "RENEWAL_GRACE_DAYS": ("0", "RENEWAL_GRACE_DAYS must be between 1 and"),
    "RENEWAL_LEAD_HOURS": ("-1", "RENEWAL_LEAD_HOURS must be between 0 and"),
    "BACKUP_DIR": ("/etc/passwd", "BACKUP_DIR must name a folder, but /etc/passwd is a file"),
    "HOST": ("127.0.0.1:80", "HOST must be an IP address or a host name"),
    "PORT": ("http", "PORT must be an integer"),
    "WEB_CONCURRENCY": ("0", "WEB_CONCURRENCY must be at least 1"),
    "GUNICORN_TIMEOUT": ("30s", "GUNICORN_TIMEOUT must be an integer"),
    "GUNICORN_MAX_REQUESTS": ("-1", "GUNICORN_MAX_REQUESTS must be at least 0"),
    "GUNICORN_PIDFILE": ("/tmp", "GUNICORN_PIDFILE must name a file, but /tmp is a folder"),
    "GUNICORN_ACCESS_LOG": ("/tmp", "GUNICORN_ACCESS_LOG must name a file, but /tmp is a folder"),
    "GUNICORN_ERROR_LOG": ("/tmp", "GUNICORN_ERROR_LOG must name a file, but /tmp is a folder"),
    "FORWARDED_ALLOW_IPS": ("nginx", "'nginx' is not one"),
}


def test_the_defaults_have_not_changed():
    assert load_config("/srv/instance", env={}) == DEFAULTS


def test_every_setting_has_a_good_and_a_bad_example():
    """A new setting must say here what it accepts and what it refuses."""
    assert sorted(GOOD) == sorted(set(NAMES) - REFUSED)
    assert sorted(BAD) == sorted(NAMES)


# What a good value needs beside it.
ALONGSIDE = {
    "DB_SCHEMAS": {"DATABASE_URL": "postgresql://db/licensing"},
    "OWNERSHIP_GUARD": {"APP_ENV": "production"},
}


@pytest.mark.parametrize("name", sorted(set(NAMES) - REFUSED))
def test_every_variable_is_read(name):
    alongside = ALONGSIDE.get(name, {})
    folder = None if name == "INSTANCE_PATH" else "/srv/instance"  # create_app's, if given
    before = load_settings(folder, environ=alongside)
    after = load_settings(folder, environ={**alongside, name: GOOD[name]})
    assert after.model_dump() != before.model_dump()
    if name not in NOT_IN_APP_CONFIG:
        config = before.as_config()
        assert {k for k, v in after.as_config().items() if config[k] != v}, name


@pytest.fixture
def bare_env(monkeypatch, tmp_path, signing_key_file):
    """No setting in the environment; create_app's overrides give what a test app needs."""
    for name in NAMES:
        if name != "INSTANCE_PATH":  # conftest's private instance folder for this run
            monkeypatch.delenv(name, raising=False)
    return {
        "APP_ENV": "testing",
        "DATABASE_URL": f"sqlite:///{tmp_path}/app.db",
        "LICENSE_SIGNING_KEYS": signing_key_file,
        "SANDBOX_LEDGER": str(tmp_path / "ledger.jsonl"),
        "BACKUP_DIR": str(tmp_path / "backups"),
    }


PRODUCTION = {
    "APP_ENV": "production",
    "SECRET_KEY": STRONG_SECRET,
    "JWT_SECRET_KEY": OTHER_SECRET,
    "ALLOW_SANDBOX_PAYMENTS": True,
}


@pytest.mark.parametrize("name", NAMES)
def test_every_bad_value_stops_create_app_with_one_line(name, bare_env, monkeypatch):
    value, message = BAD[name]
    overrides = {key: v for key, v in bare_env.items() if key != name}
    if name == "LICENSE_SIGNING_KEYS":
        overrides.update(PRODUCTION)
    monkeypatch.setenv(name, value)
    with pytest.raises((ConfigError, SigningKeyError)) as raised:
        create_app(overrides)
    line = str(raised.value)
    assert message in line
    assert "\n" not in line and "Traceback" not in line


def test_several_bad_values_are_one_line_naming_each():
    with pytest.raises(ConfigError) as raised:
        load_settings("/srv/i", environ={"DB_POOL_SIZE": "many", "SQL_ECHO": "loud"})
    assert str(raised.value) == (
        "DB_POOL_SIZE must be an integer, got 'many'; "
        "SQL_ECHO must be true or false (1/0, yes/no, on/off), got 'loud'"
    )


def test_overrides_are_checked_too(bare_env):
    with pytest.raises(ConfigError, match="RATELIMIT_LOGIN_PER_IP is not a rate limit"):
        create_app({**bare_env, "RATELIMIT_LOGIN_PER_IP": "lots"})
    with pytest.raises(ConfigError, match="JWT_ACCESS_TTL_SECONDS must be between 1 and"):
        create_app({**bare_env, "JWT_ACCESS_TOKEN_EXPIRES": 0})  # an app.config key


def test_urls_and_secrets_are_never_repeated_in_errors():
    url = "postgresql+psycopg2://licensing:hunter2-password@db/x"
    with pytest.raises(ConfigError) as raised:
        load_settings("/srv/i", environ={"DATABASE_URL": url, "REDIS_URL": "x://:pw@r"})
    assert "hunter2" not in str(raised.value) and "pw@" not in str(raised.value)


def test_the_guard_is_relaxed_in_production_only(bare_env):
    off = {"OWNERSHIP_GUARD": "off"}
    assert load_settings("/srv/i", environ=off).guard_mode == "raise"
    # An override does not relax it either: the one rule is Settings.guard_mode.
    app = create_app({**bare_env, **off})
    assert app.config["OWNERSHIP_GUARD"] == "raise"
    app.extensions["db"].dispose()
    production = {"APP_ENV": "production", **off}
    assert load_settings("/srv/i", environ=production).guard_mode == "off"


def test_the_app_keeps_its_typed_settings(bare_env, tmp_path):
    app = create_app({**bare_env, "DB_POOL_SIZE": 3, "RECORDING_GATEWAY_LOG": "/x"})
    try:
        settings = settings_of(app)
        assert settings.database.pool_size == app.config["DB_POOL_SIZE"] == 3
        assert settings.tokens.access_ttl == app.config["JWT_ACCESS_TOKEN_EXPIRES"]
        assert app.config["RECORDING_GATEWAY_LOG"] == "/x"  # not a setting: passed through
        # Secrets generated into the instance folder are the ones the settings name.
        assert settings.tokens.secret_key == app.config["SECRET_KEY"]
        assert settings.tokens.jwt_secret_key == app.config["JWT_SECRET_KEY"]
        assert len(settings.tokens.secret_key or "") >= 32
        assert "secret_key" not in repr(settings.tokens)  # never in a log line
        with app.app_context():
            assert current_settings() is settings
    finally:
        app.extensions["db"].dispose()


def test_an_empty_variable_counts_as_unset():
    settings = load_settings("/srv/i", environ={"DB_POOL_SIZE": "", "REDIS_URL": ""})
    assert settings.database.pool_size == 5 and settings.redis.url is None


# --- as an operator meets them: the flask CLI and gunicorn ------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"DB_POOL_SIZE": "many"}, "error: DB_POOL_SIZE must be an integer, got 'many'"),
        (
            {"RATELIMIT_LOGIN_PER_IP": "lots", "OWNERSHIP_GUARD": "warn"},
            "error: OWNERSHIP_GUARD must be one of raise, log or off, got 'warn'; "
            "RATELIMIT_LOGIN_PER_IP is not a rate limit like 10/minute;100/hour, got 'lots'",
        ),
        (
            {"DATABASE_URL": "postgresql://u:hunter2@h:notaport/x"},
            "error: DATABASE_URL: port must be a number 1-65535",
        ),
        (
            {"REDIS_URL": "redis://127.0.0.1:notaport/0"},
            "error: REDIS_URL: port must be a number 1-65535",
        ),
        (
            {"REDIS_URL": "redis://:hunter2@127.0.0.1/10?socket_timeout=abc"},
            "error: REDIS_URL: the socket_timeout option has a value redis-py cannot read",
        ),
    ],
    ids=["one", "two", "database-port", "redis-port", "redis-option"],
)
def test_the_cli_says_a_bad_setting_in_one_line(tmp_path, env, line):
    env = project_env(APP_ENV="testing", **{"DATABASE_URL": f"sqlite:///{tmp_path}/app.db", **env})
    result = run_flask("db", "current", env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [line]


@pytest.mark.slow
def test_gunicorn_says_a_bad_setting_in_one_line_before_it_forks(tmp_path):
    port = free_port()
    code, output = _gunicorn_exits(
        port,
        APP_ENV="testing",
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db",
        RATELIMIT_VALIDATE_PER_TOKEN="120 a minute",
    )
    assert code == 2, output
    error = "error: RATELIMIT_VALIDATE_PER_TOKEN is not a rate limit like 10/minute;100/hour"
    assert [line for line in output.splitlines() if line.startswith("error:")] == [
        f"{error}, got '120 a minute'"
    ], output
    assert "Traceback" not in output and "Booting worker" not in output
    assert _port_is_free(port)


def test_docs_list_every_setting():
    """docs/configuration.md's table is generated from the settings (`make docs`)."""
    from app.settings.docs import as_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert as_markdown() in doc, "docs/configuration.md is stale: regenerate with `make docs`"


# --- rules between a setting and what the modules know -----------------------------------


def test_a_renewal_lead_as_long_as_a_paid_period_is_refused(bare_env):
    """RENEWAL_LEAD_HOURS=8784 with the 30-day pro plan made each hourly renewal run charge
    one more period in advance: the lead must be shorter than the shortest paid period."""
    with pytest.raises(ConfigError) as raised:
        create_app({**bare_env, "RENEWAL_LEAD_HOURS": "720"})  # 30 days: pro's period
    line = str(raised.value)
    assert line == (
        "RENEWAL_LEAD_HOURS (720) must be shorter than the shortest paid plan's period "
        "(pro: 30 days, 720 hours)"
    )
    # A free plan's period does not count: it is never renewed for money.
    plans = '[{"plan": "free", "seats": 1, "max_seats": 1, "price_cents": 0, "currency": "EUR",'
    plans += ' "period_days": 1}, {"plan": "pro", "seats": 1, "max_seats": 5, "price_cents": 9,'
    plans += ' "currency": "EUR", "period_days": 2}]'
    with pytest.raises(ConfigError, match=r"RENEWAL_LEAD_HOURS \(48\) .* \(pro: 2 days"):
        create_app({**bare_env, "PLANS_JSON": plans, "RENEWAL_LEAD_HOURS": "48"})
    app = create_app({**bare_env, "PLANS_JSON": plans, "RENEWAL_LEAD_HOURS": "47"})
    assert app.config["RENEWAL_LEAD"] == timedelta(hours=47)
    app.extensions["db"].dispose()


@pytest.mark.parametrize(
    ("limit", "why"),
    [
        ("1/300000000 years", "a window longer than a year"),
        ("10/minute;1/2 years", "a window longer than a year"),
        ("5/0 minutes", "a window of no time"),
        ("5 per 0 minutes", "a window of no time"),
        ("5 PER 00 Minute", "a window of no time"),
    ],
)
def test_a_rate_limit_window_redis_cannot_keep_is_refused(limit, why):
    """RATELIMIT_VALIDATE_PER_TOKEN=1/300000000 years passed, and then Redis refused the
    counter's expiry after counting it: the route answered 429 to every request, for good
    (the outside test of the seventh session). A window must be some time, and at most a
    year."""
    with pytest.raises(ConfigError) as raised:
        load_settings("/srv/i", environ={"RATELIMIT_VALIDATE_PER_TOKEN": limit})
    assert str(raised.value) == (
        f"RATELIMIT_VALIDATE_PER_TOKEN must count over a period of one second to one year, "
        f"got {limit!r} ({why})"
    )


def test_a_rate_limit_of_a_year_is_accepted():
    settings = load_settings("/srv/i", environ={"RATELIMIT_VALIDATE_PER_TOKEN": "1000/year"})
    assert settings.rate_limits.validate_per_token == "1000/year"


@pytest.mark.parametrize("limit", ["0/minute", "10/minute;0/hour"])
def test_a_rate_limit_of_zero_is_refused(limit):
    """RATELIMIT_LOGIN_PER_IP=0/minute passed, and then every login answered 429."""
    with pytest.raises(ConfigError) as raised:
        load_settings("/srv/i", environ={"RATELIMIT_LOGIN_PER_IP": limit})
    assert str(raised.value) == (
        "RATELIMIT_LOGIN_PER_IP must allow at least one request in each period "
        f"(0 refuses every request), got {limit!r}"
    )


@pytest.mark.parametrize("port", ["notaport", "99999", "0"])
def test_a_database_url_with_a_bad_port_is_one_clear_line(port):
    """postgresql://u:pw@h:notaport/x said "DATABASE_URL invalid literal for int()…"."""
    url = f"postgresql://u:hunter2@h:{port}/x"
    with pytest.raises(ConfigError) as raised:
        load_settings("/srv/i", environ={"DATABASE_URL": url})
    assert str(raised.value) == "DATABASE_URL: port must be a number 1-65535"


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("redis://127.0.0.1:notaport/0", ": port must be a number 1-65535"),
        ("redis://127.0.0.1:99999/0", ": port must be a number 1-65535"),
        ("rediss://:hunter2@cache:0/0", ": port must be a number 1-65535"),
        (
            "redis://:hunter2@127.0.0.1:6379/10?socket_timeout=abc",
            ": the socket_timeout option has a value redis-py cannot read",
        ),
        ("unix://", ": unix:// needs the socket's path (unix:///run/redis/redis.sock)"),
    ],
)
def test_a_redis_url_redis_py_cannot_read_is_one_line(url, phrase):
    """These passed the settings and then crashed every start with a traceback."""
    with pytest.raises(ConfigError) as raised:
        load_settings("/srv/i", environ={"REDIS_URL": url})
    assert str(raised.value) == f"REDIS_URL{phrase}"


def test_a_unix_socket_redis_url_is_accepted_and_used(bare_env, tmp_path):
    """REDIS_URL=unix:///path passed the settings, then every start crashed: flask-limiter
    knows the socket only as redis+unix://."""
    socket_path = str(tmp_path / "redis.sock")
    app = create_app({**bare_env, "REDIS_URL": f"unix://{socket_path}?db=3"})
    try:
        assert app.config["REDIS_URL"] == f"unix://{socket_path}?db=3"  # redis-py's, as given
        assert app.config["RATELIMIT_STORAGE_URI"] == f"redis+unix://{socket_path}?db=3"
        from app.http.limits import limiter

        with app.app_context():
            pool = limiter.storage.storage.connection_pool
        assert pool.connection_kwargs["path"] == socket_path
        assert pool.connection_kwargs["db"] == 3
    finally:
        app.extensions["db"].dispose()
