"""The settings, grouped by concern; each field names its environment variable."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from app.settings.values import (
    INT32,
    DatabaseURL,
    Days,
    Group,
    Hours,
    Identifier,
    LogLevel,
    Minutes,
    PositiveHours,
    RateLimit,
    Seconds,
    Text,
    addresses_or_any,
    bind_address,
    env,
    env_name,
    file_path,
    folder_path,
    networks,
    not_separable,
    redis_url,
)


class Logging(Group):
    level: LogLevel = env("LOG_LEVEL", "INFO", "log level")
    format: Literal["json", "text"] | None = env(
        "LOG_FORMAT",
        None,
        "`json` (one object per line, for log shippers) or `text`",
        shown="production: `json`; else `text`",
    )


class Http(Group):
    max_content_length: int = env(
        "MAX_CONTENT_LENGTH", 1024 * 1024, "larger request bodies get 413", ge=1
    )
    trusted_proxies: int = env(
        "TRUSTED_PROXIES",
        0,
        "reverse-proxy hops whose `X-Forwarded-For` is believed",
        ge=0,
        le=10,
    )
    trusted_proxy_addresses: Annotated[str, BeforeValidator(networks)] = env(
        "TRUSTED_PROXY_ADDRESSES",
        "127.0.0.1,::1",
        "the proxies' addresses (or networks): `X-Forwarded-For` from any other peer is not "
        "believed",
    )


class Database(Group):
    url: DatabaseURL = env(
        "DATABASE_URL",
        None,
        "SQLite file or `postgresql://…` (psycopg 3)",
        shown="`sqlite:///instance/app.db`",
        echo=False,
    )
    admin_url: DatabaseURL = env(
        "ADMIN_DATABASE_URL",
        None,
        "phase 3: admin's tables in a database of their own; audit entries travel as events "
        "([docs/phases.md](phases.md))",
        echo=False,
    )
    auth_url: Annotated[str | None, BeforeValidator(not_separable)] = env(
        "AUTH_DATABASE_URL", None, "refused: auth shares transactions with orders", echo=False
    )
    orders_url: Annotated[str | None, BeforeValidator(not_separable)] = env(
        "ORDERS_DATABASE_URL", None, "refused: orders shares transactions with auth", echo=False
    )
    application_name: Text = env("DB_APPLICATION_NAME", "licensing", "shown in `pg_stat_activity`")
    pool_size: int = env("DB_POOL_SIZE", 5, "connection pool: connections kept", ge=1, le=1000)
    max_overflow: int = env(
        "DB_MAX_OVERFLOW", 5, "connection pool: extra connections under load", ge=0, le=1000
    )
    pool_timeout: int = env(
        "DB_POOL_TIMEOUT", 10, "seconds a request waits for a pooled connection", ge=1, le=3600
    )
    pool_recycle: int = env(
        "DB_POOL_RECYCLE", 1800, "seconds before a pooled connection is replaced", ge=1
    )
    statement_timeout_ms: int = env(
        "DB_STATEMENT_TIMEOUT_MS", 15000, "PostgreSQL statement timeout", ge=1, le=INT32
    )
    sqlite_busy_timeout_ms: int = env(
        "SQLITE_BUSY_TIMEOUT_MS",
        5000,
        "how long a SQLite writer waits for the write lock",
        ge=0,
        le=INT32,
    )
    echo: bool = env("SQL_ECHO", False, "log every SQL statement")
    schemas: bool = env(
        "DB_SCHEMAS",
        False,
        "PostgreSQL, phase 2: each module's tables in its own schema (`auth`, `admin`, "
        "`orders`, `kernel`, `webhooks`); see [docs/phases.md](phases.md)",
    )
    roles: bool = env(
        "DB_ROLES",
        False,
        "PostgreSQL: run each module's statements under its role `<prefix><module>`; the app "
        "logs in as `<prefix>app` (apply `flask ownership grants --create-login-role` first)",
    )
    role_prefix: Identifier = env("DB_ROLE_PREFIX", "licensing_", "the roles' name prefix")
    ownership_guard: Literal["raise", "log", "off"] = env(
        "OWNERSHIP_GUARD",
        "raise",
        "production only: `raise`, `log` or `off` (always `raise` elsewhere)",
    )


class Redis(Group):
    url: Annotated[str | None, BeforeValidator(redis_url)] = env(
        "REDIS_URL",
        None,
        "rate-limit storage shared by all workers; the outbox stream (phase 3); checked by "
        "`/readyz`",
        echo=False,
    )


class Outbox(Group):
    stream: Text = env("OUTBOX_STREAM", "licensing:events", "phase 3: the Redis stream")
    batch_size: int = env("OUTBOX_BATCH_SIZE", 200, "phase 3: events per relay round", ge=1)
    lease_seconds: int = env(
        "OUTBOX_LEASE_SECONDS",
        15,
        "phase 3: how long a relay's lease lasts without renewal",
        ge=1,
        le=3600,
    )


class Webhooks(Group):
    allow_private: bool = env(
        "WEBHOOKS_ALLOW_PRIVATE",
        False,
        "let webhook URLs resolve to loopback and private addresses (tests, on-premise "
        "receivers); refused otherwise ([docs/events.md](events.md))",
    )
    encryption_key: str | None = env(
        "WEBHOOKS_ENCRYPTION_KEY",
        None,
        "the Fernet key webhook signing secrets are stored under (`python -c 'from "
        "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`); "
        "changing it means rotating every endpoint's secret",
        shown="derived from `SECRET_KEY`",
        echo=False,
    )
    timeout_seconds: int = env(
        "WEBHOOKS_TIMEOUT_SECONDS", 15, "how long a webhook receiver has to answer", ge=1, le=60
    )

    @field_validator("encryption_key")
    @classmethod
    def _fernet_key(cls, value: str | None) -> str | None:
        from cryptography.fernet import Fernet

        if value is not None:
            try:
                Fernet(value)
            except (ValueError, TypeError):
                raise ValueError("must be a Fernet key (32 bytes, url-safe base64)") from None
        return value


def _duration(name: str, default: int, doc: str, *, key: str) -> Any:
    """A duration given in the unit its variable's name ends with (`…_SECONDS`, `…_DAYS`),
    `default` too; app.config holds it as a timedelta under `key`."""
    unit = name.rpartition("_")[2].lower()
    return env(name, timedelta(**{unit: default}), doc, key=key, shown=str(default))


class Tokens(Group):
    secret_key: str | None = env(
        "SECRET_KEY",
        None,
        "≥ 32 characters, not guessable (no placeholder, padding or repeated pattern) and "
        "different from `JWT_SECRET_KEY`, in every environment; required in production",
        shown="development and testing: generated into the instance folder",
        echo=False,
    )
    jwt_secret_key: str | None = env(
        "JWT_SECRET_KEY",
        None,
        "signs access and refresh tokens (HS256); the same rules as `SECRET_KEY`",
        shown="development and testing: generated into the instance folder",
        echo=False,
    )
    access_ttl: Seconds = _duration(
        "JWT_ACCESS_TTL_SECONDS",
        900,
        "access token lifetime, seconds",
        key="JWT_ACCESS_TOKEN_EXPIRES",
    )
    refresh_ttl: Seconds = _duration(
        "JWT_REFRESH_TTL_SECONDS",
        30 * 86400,
        "refresh token lifetime, seconds",
        key="JWT_REFRESH_TOKEN_EXPIRES",
    )
    console_session_ttl: PositiveHours = _duration(
        "CONSOLE_SESSION_HOURS",
        12,
        "the longest a web console sign-in lasts (a browser session), hours",
        key="CONSOLE_SESSION_TTL",
    )


class Passwords(Group):
    """argon2id, OWASP's parameters (m=19 MiB, t=2, p=1) by default."""

    time_cost: int = env("ARGON2_TIME_COST", 2, "password hashing: passes", ge=1, le=100)
    memory_cost: int = env(
        "ARGON2_MEMORY_COST", 19 * 1024, "password hashing: memory, KiB", ge=8, le=4 * 1024**2
    )
    parallelism: int = env("ARGON2_PARALLELISM", 1, "password hashing: lanes", ge=1, le=64)


class Lockout(Group):
    """Login throttling (docs/adr/0008-login-lockout.md)."""

    max_failures: int = env(
        "LOGIN_MAX_FAILURES", 5, "failures that lock an address out of an account", ge=1
    )
    account_max_failures: int = env(
        "LOGIN_ACCOUNT_MAX_FAILURES", 50, "failures (all addresses) that lock the account", ge=1
    )
    failure_window: Minutes = _duration(
        "LOGIN_FAILURE_WINDOW_MINUTES",
        15,
        "the window failures count in, minutes",
        key="LOGIN_FAILURE_WINDOW",
    )
    first_lock: Seconds = _duration(
        "LOGIN_LOCK_SECONDS",
        60,
        "the first lock, seconds; each consecutive lock doubles the one before",
        key="LOGIN_FIRST_LOCK",
    )
    longest_lock: Minutes = _duration(
        "LOGIN_LOCK_MINUTES", 30, "the longest lock, minutes", key="LOGIN_LOCK_DURATION"
    )


def _limit(name: str, default: str, doc: str) -> Any:
    return env(name, default, f"{doc} (flask-limiter syntax; each period 1 second to 1 year)")


class RateLimits(Group):
    """Per client address, and per account (a verified token's user, or the body's email
    with the address) or per license token; Redis-backed when REDIS_URL is set.
    `RATELIMIT_<ROUTE>_PER_<KEY>` are the per-route limits."""

    enabled: bool = env("RATELIMIT_ENABLED", True, "rate limiting on or off")
    key_prefix: Text = env("RATELIMIT_KEY_PREFIX", "licensing", "Redis key prefix")
    register_per_ip: RateLimit = _limit(
        "RATELIMIT_REGISTER_PER_IP", "10/minute;100/hour", "register, per address"
    )
    register_per_account: RateLimit = _limit(
        "RATELIMIT_REGISTER_PER_ACCOUNT", "5/minute", "register, per email and address"
    )
    login_per_ip: RateLimit = _limit(
        "RATELIMIT_LOGIN_PER_IP", "30/minute;300/hour", "login, per address"
    )
    login_per_account: RateLimit = _limit(
        "RATELIMIT_LOGIN_PER_ACCOUNT",
        "10/minute",
        "login, per account and address; password change, per account (the token's user)",
    )
    refresh_per_ip: RateLimit = _limit(
        "RATELIMIT_REFRESH_PER_IP", "60/minute", "refresh, per address"
    )
    refresh_per_account: RateLimit = _limit(
        "RATELIMIT_REFRESH_PER_ACCOUNT", "20/minute", "refresh, per account (the token's user)"
    )
    activate_per_ip: RateLimit = _limit(
        "RATELIMIT_ACTIVATE_PER_IP", "60/minute", "activation, per address"
    )
    activate_per_account: RateLimit = _limit(
        "RATELIMIT_ACTIVATE_PER_ACCOUNT",
        "30/minute",
        "activation, per account (a Bearer token's user; with email and password, per account "
        "and address)",
    )
    # Validation is the hot path: vendors' apps call it at start and on a timer.
    validate_per_ip: RateLimit = _limit(
        "RATELIMIT_VALIDATE_PER_IP", "1200/minute", "validate and app deactivation, per address"
    )
    validate_per_token: RateLimit = _limit(
        "RATELIMIT_VALIDATE_PER_TOKEN", "120/minute", "validate and app deactivation, per token"
    )

    @classmethod
    def route_limits(cls) -> list[str]:
        """The variable names of the per-route limits."""
        return sorted(
            name for name in (env_name(f) for f in cls.model_fields.values()) if "_PER_" in name
        )


class Licenses(Group):
    signing_keys: str | None = env(
        "LICENSE_SIGNING_KEYS",
        None,
        "Ed25519 private key (PEM) files, comma-separated; the first signs, all verify (`flask "
        "licenses generate-key PATH`); required in production",
        shown="development and testing: generated `instance/license-signing-key.pem`",
    )
    jwks_max_age: int = env(
        "JWKS_MAX_AGE", 300, "`Cache-Control: max-age` of `/.well-known/jwks.json`, seconds", ge=0
    )
    # A license token expires with its license, or after this long if that comes first;
    # `validate` hands out a fresh one in the second half of its life (ADR 0007).
    token_ttl: Days = _duration(
        "LICENSE_TOKEN_TTL_DAYS",
        30,
        "a license token's longest life, days ([ADR 0007](adr/0007-license-token-expiry.md))",
        key="LICENSE_TOKEN_TTL",
    )


class Payments(Group):
    plans_json: str | None = env(
        "PLANS_JSON",
        None,
        "the plan catalog, a JSON list like `GET /plans` answers (checked when the app starts)",
        shown="free, pro, enterprise",
        echo=False,
    )
    provider: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = env(
        "PAYMENT_PROVIDER",
        "sandbox",
        "`sandbox` or an installed provider's name (entry point group "
        "`licensing.payment_providers`; checked when the app starts); production refuses the "
        "sandbox unless `ALLOW_SANDBOX_PAYMENTS=1`",
    )
    allow_sandbox: bool = env(
        "ALLOW_SANDBOX_PAYMENTS", False, "production: allow the sandbox provider (a demo)"
    )
    sandbox_ledger: Annotated[str | None, BeforeValidator(file_path)] = env(
        "SANDBOX_LEDGER",
        None,
        "the sandbox's ledger file",
        shown="`instance/sandbox-ledger.jsonl`",
    )
    sandbox_latency_ms: int = env(
        "SANDBOX_LATENCY_MS", 0, "the sandbox's simulated latency", ge=0, le=60_000
    )


class Orders(Group):
    lease: Seconds = _duration(
        "ORDER_LEASE_SECONDS",
        60,
        "how long an order attempt holds its `Idempotency-Key` (or a renewal its period) "
        "before a retry may take over from a process that died mid-way",
        key="ORDER_LEASE",
    )
    renewal_grace: Days = _duration(
        "RENEWAL_GRACE_DAYS",
        7,
        "days a declined renewal keeps the subscription before it lapses",
        key="RENEWAL_GRACE",
    )
    # Renew this long before the renewal date, so that licenses never lapse between two
    # cron runs (at least the cron interval: hourly by default).
    renewal_lead: Hours = _duration(
        "RENEWAL_LEAD_HOURS",
        2,
        "renew this many hours before the renewal date (at least the cron interval; shorter "
        "than the shortest paid plan's period, checked when the app starts)",
        key="RENEWAL_LEAD",
    )


class Backups(Group):
    dir: Annotated[str | None, BeforeValidator(folder_path)] = env(
        "BACKUP_DIR", None, "where backups go", shown="`instance/backups`"
    )


class Server(Group):
    """gunicorn's settings: deploy/gunicorn.conf.py reads them itself (importing the app there
    would start its metrics too early), and they are checked here when the master builds the
    app, before it binds the port. Not copied to app.config."""

    host: Annotated[str, BeforeValidator(bind_address)] = env(
        "HOST", "127.0.0.1", "the address gunicorn binds (keep it local: expose only nginx)"
    )
    port: int = env(
        "PORT", 8000, "gunicorn's port (deploy/nginx.conf's upstream names it)", ge=1, le=65535
    )
    workers: int | None = env(
        "WEB_CONCURRENCY", None, "gunicorn worker processes", shown="2 x cores + 1", ge=1, le=512
    )
    timeout: int = env(
        "GUNICORN_TIMEOUT", 30, "seconds before a silent worker is restarted", ge=1, le=3600
    )
    max_requests: int = env(
        "GUNICORN_MAX_REQUESTS",
        5000,
        "requests before a worker is recycled (with 10% jitter; 0: never)",
        ge=0,
    )
    pidfile: Annotated[str | None, BeforeValidator(file_path)] = env(
        "GUNICORN_PIDFILE", None, "the master's pid file, for `kill -HUP` after a deploy"
    )
    access_log: Annotated[str | None, BeforeValidator(file_path)] = env(
        "GUNICORN_ACCESS_LOG",
        None,
        "gunicorn's own access log (`-`: stderr); the app logs each request anyway",
    )
    error_log: Annotated[str | None, BeforeValidator(file_path)] = env(
        "GUNICORN_ERROR_LOG", None, "gunicorn's log and (then) the app's output", shown="stderr"
    )
    forwarded_allow_ips: Annotated[str, BeforeValidator(addresses_or_any)] = env(
        "FORWARDED_ALLOW_IPS",
        "127.0.0.1",
        "peers whose `X-Forwarded-*` gunicorn passes on (`*`: any)",
    )
