"""Settings from the environment, with safe development defaults.

No secret has a default in the source. `APP_ENV=production` refuses to start without real
secrets: a missing `SECRET_KEY` or `JWT_SECRET_KEY` is a `ConfigError` with a message
saying what to set. In development and testing, unset secrets are generated once per
instance folder (`create_app`); a secret that is set must be strong in every environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

ENVIRONMENTS = ("development", "production", "testing")
MIN_SECRET_LENGTH = 32
SECRETS = ("SECRET_KEY", "JWT_SECRET_KEY")


class ConfigError(RuntimeError):
    """The configuration cannot run; the message says what to fix."""


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _networks(env: Mapping[str, str], name: str, default: str) -> str:
    """A comma-separated list of addresses or networks (checked here, used as text)."""
    import ipaddress

    raw = env.get(name) or default
    for item in raw.split(","):
        try:
            ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"{name}: {item.strip()!r} is not an address or network") from None
    return raw


def _check_database_url(url: str) -> str:
    """Refuse a URL the app cannot use; return its backend (`sqlite` or `postgresql`)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"DATABASE_URL is not a database URL: {url!r}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "postgres"):
        raise ConfigError(f"DATABASE_URL must be sqlite:///… or postgresql://…, not {backend}://")
    # One driver per backend, the one the engines, migrations and backups all use:
    # postgres:// and postgresql:// (with or without +psycopg) mean psycopg 3.
    _, _, driver = parsed.drivername.partition("+")
    if driver not in ("", "pysqlite" if backend == "sqlite" else "psycopg"):
        raise ConfigError(
            f"DATABASE_URL: the {parsed.drivername} driver is not supported; "
            + ("write sqlite:///…" if backend == "sqlite" else "write postgresql://… (psycopg 3)")
        )
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError(
            "DATABASE_URL must name a SQLite file (sqlite:///path/app.db): an in-memory "
            "database is private to each connection and each worker"
        )
    return "postgresql" if backend == "postgres" else backend


# Phase 3 (docs/phases.md): the module that may run on its own database. auth and orders share
# transactions with each other (a paid order grants a subscription), so they stay together.
SEPARABLE_MODULES = ("admin",)


def _module_databases(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """{module: (url, backend)} for the modules given a database of their own."""
    urls = {}
    for module in ("auth", "admin", "orders"):
        url = env.get(f"{module.upper()}_DATABASE_URL")
        if not url:
            continue
        if module not in SEPARABLE_MODULES:
            raise ConfigError(
                f"{module.upper()}_DATABASE_URL: only {', '.join(SEPARABLE_MODULES)} can run on "
                "its own database (see docs/phases.md)"
            )
        try:
            urls[module] = (url, _check_database_url(url))
        except ConfigError as exc:
            raise ConfigError(f"{module.upper()}_{exc}") from None
    return urls


def load_config(
    instance_path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The app configuration read from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    app_env = env.get("APP_ENV", "development").strip().lower()
    if app_env not in ENVIRONMENTS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}, got {app_env!r}")
    production = app_env == "production"
    instance = Path(instance_path)

    database_url = env.get("DATABASE_URL") or f"sqlite:///{instance / 'app.db'}"
    backend = _check_database_url(database_url)
    module_databases = _module_databases(env)
    if _bool(env.get("DB_SCHEMAS"), False) and {
        backend,
        *(b for _, b in module_databases.values()),
    } != {"postgresql"}:
        raise ConfigError("DB_SCHEMAS=on needs PostgreSQL database URLs (SQLite has no schemas)")
    return {
        "APP_ENV": app_env,
        "TESTING": app_env == "testing",
        # Unset: None. Production refuses to start; elsewhere create_app generates them.
        "SECRET_KEY": env.get("SECRET_KEY") or None,
        "JWT_SECRET_KEY": env.get("JWT_SECRET_KEY") or None,
        "DATABASE_URL": database_url,
        # Phase 3: modules on their own database ({"admin": url}); their inbound facade
        # calls travel through the outbox, `flask outbox relay` and `flask outbox consume`.
        "MODULE_DATABASE_URLS": {module: url for module, (url, _) in module_databases.items()},
        "REDIS_URL": env.get("REDIS_URL") or None,
        "OUTBOX_STREAM": env.get("OUTBOX_STREAM", "licensing:events"),
        "OUTBOX_BATCH_SIZE": _int(env, "OUTBOX_BATCH_SIZE", 200),
        "OUTBOX_LEASE_SECONDS": _int(env, "OUTBOX_LEASE_SECONDS", 15),
        # Webhooks (docs/events.md): receivers on private networks only when allowed; the
        # key the endpoints' signing secrets are encrypted with (default: from SECRET_KEY).
        "WEBHOOKS_ALLOW_PRIVATE": _bool(env.get("WEBHOOKS_ALLOW_PRIVATE"), False),
        "WEBHOOKS_ENCRYPTION_KEY": env.get("WEBHOOKS_ENCRYPTION_KEY") or None,
        "WEBHOOKS_TIMEOUT_SECONDS": _int(env, "WEBHOOKS_TIMEOUT_SECONDS", 15),
        "DB_APPLICATION_NAME": env.get("DB_APPLICATION_NAME", "licensing"),
        "DB_POOL_SIZE": _int(env, "DB_POOL_SIZE", 5),
        "DB_MAX_OVERFLOW": _int(env, "DB_MAX_OVERFLOW", 5),
        "DB_POOL_TIMEOUT": _int(env, "DB_POOL_TIMEOUT", 10),
        "DB_POOL_RECYCLE": _int(env, "DB_POOL_RECYCLE", 1800),
        "DB_STATEMENT_TIMEOUT_MS": _int(env, "DB_STATEMENT_TIMEOUT_MS", 15000),
        "SQLITE_BUSY_TIMEOUT_MS": _int(env, "SQLITE_BUSY_TIMEOUT_MS", 5000),
        # The guard always raises outside production; production may choose "log" or "off".
        "OWNERSHIP_GUARD": env.get("OWNERSHIP_GUARD", "raise") if production else "raise",
        "SQL_ECHO": _bool(env.get("SQL_ECHO"), False),
        # Phase 2 (PostgreSQL): each module's tables in its own schema (`auth.users`, …) …
        "DB_SCHEMAS": _bool(env.get("DB_SCHEMAS"), False),
        # … and each module's statements run under its own database role.
        "DB_ROLES": _bool(env.get("DB_ROLES"), False),
        "DB_ROLE_PREFIX": env.get("DB_ROLE_PREFIX", "licensing_"),
        "TRUSTED_PROXIES": _int(env, "TRUSTED_PROXIES", 0),
        # The peers whose X-Forwarded-* hops are believed (the reverse proxy's addresses).
        "TRUSTED_PROXY_ADDRESSES": _networks(env, "TRUSTED_PROXY_ADDRESSES", "127.0.0.1,::1"),
        "BACKUP_DIR": env.get("BACKUP_DIR") or str(instance / "backups"),
        "MAX_CONTENT_LENGTH": _int(env, "MAX_CONTENT_LENGTH", 1024 * 1024),
        "LOG_LEVEL": env.get("LOG_LEVEL", "INFO").upper(),
        # One JSON object per line in production (for log shippers); plain text otherwise.
        "LOG_FORMAT": env.get("LOG_FORMAT") or ("json" if production else "text"),
        # Tokens
        "JWT_ACCESS_TOKEN_EXPIRES": timedelta(seconds=_int(env, "JWT_ACCESS_TTL_SECONDS", 900)),
        "JWT_REFRESH_TOKEN_EXPIRES": timedelta(
            seconds=_int(env, "JWT_REFRESH_TTL_SECONDS", 30 * 24 * 3600)
        ),
        # Passwords: argon2id, OWASP's parameters (m=19 MiB, t=2, p=1) by default
        "ARGON2_TIME_COST": _int(env, "ARGON2_TIME_COST", 2),
        "ARGON2_MEMORY_COST": _int(env, "ARGON2_MEMORY_COST", 19 * 1024),
        "ARGON2_PARALLELISM": _int(env, "ARGON2_PARALLELISM", 1),
        # Login throttling (docs/adr/0008-login-lockout.md): failures per account and client
        # address, and per account from all addresses, within a window; each consecutive
        # lock twice as long as the one before, from LOGIN_LOCK_SECONDS to LOGIN_LOCK_MINUTES.
        "LOGIN_MAX_FAILURES": _int(env, "LOGIN_MAX_FAILURES", 5),
        "LOGIN_ACCOUNT_MAX_FAILURES": _int(env, "LOGIN_ACCOUNT_MAX_FAILURES", 50),
        "LOGIN_FAILURE_WINDOW": timedelta(minutes=_int(env, "LOGIN_FAILURE_WINDOW_MINUTES", 15)),
        "LOGIN_FIRST_LOCK": timedelta(seconds=_int(env, "LOGIN_LOCK_SECONDS", 60)),
        "LOGIN_LOCK_DURATION": timedelta(minutes=_int(env, "LOGIN_LOCK_MINUTES", 30)),
        # Rate limits (flask-limiter syntax); Redis-backed when REDIS_URL is set
        "RATELIMIT_ENABLED": _bool(env.get("RATELIMIT_ENABLED"), True),
        "RATELIMIT_KEY_PREFIX": env.get("RATELIMIT_KEY_PREFIX", "licensing"),
        "RATELIMIT_REGISTER_PER_IP": env.get("RATELIMIT_REGISTER_PER_IP", "10/minute;100/hour"),
        "RATELIMIT_REGISTER_PER_ACCOUNT": env.get("RATELIMIT_REGISTER_PER_ACCOUNT", "5/minute"),
        "RATELIMIT_LOGIN_PER_IP": env.get("RATELIMIT_LOGIN_PER_IP", "30/minute;300/hour"),
        "RATELIMIT_LOGIN_PER_ACCOUNT": env.get("RATELIMIT_LOGIN_PER_ACCOUNT", "10/minute"),
        "RATELIMIT_REFRESH_PER_IP": env.get("RATELIMIT_REFRESH_PER_IP", "60/minute"),
        "RATELIMIT_REFRESH_PER_ACCOUNT": env.get("RATELIMIT_REFRESH_PER_ACCOUNT", "20/minute"),
        "RATELIMIT_ACTIVATE_PER_IP": env.get("RATELIMIT_ACTIVATE_PER_IP", "60/minute"),
        "RATELIMIT_ACTIVATE_PER_ACCOUNT": env.get("RATELIMIT_ACTIVATE_PER_ACCOUNT", "30/minute"),
        # Validation is the hot path: vendors' apps call it at start and on a timer.
        "RATELIMIT_VALIDATE_PER_IP": env.get("RATELIMIT_VALIDATE_PER_IP", "1200/minute"),
        "RATELIMIT_VALIDATE_PER_TOKEN": env.get("RATELIMIT_VALIDATE_PER_TOKEN", "120/minute"),
        # Licenses: Ed25519 private key files, comma-separated; the first signs.
        "LICENSE_SIGNING_KEYS": env.get("LICENSE_SIGNING_KEYS") or None,
        "JWKS_MAX_AGE": _int(env, "JWKS_MAX_AGE", 300),
        # A license token expires with its license, or after this long if that comes first;
        # `validate` hands out a fresh one in the second half of its life (ADR 0007).
        "LICENSE_TOKEN_TTL": timedelta(days=_int(env, "LICENSE_TOKEN_TTL_DAYS", 30)),
        # Orders and payments
        "PLANS_JSON": env.get("PLANS_JSON") or None,
        "PAYMENT_PROVIDER": env.get("PAYMENT_PROVIDER", "sandbox"),
        "ALLOW_SANDBOX_PAYMENTS": _bool(env.get("ALLOW_SANDBOX_PAYMENTS"), False),
        "SANDBOX_LEDGER": env.get("SANDBOX_LEDGER") or str(instance / "sandbox-ledger.jsonl"),
        "SANDBOX_LATENCY_MS": _int(env, "SANDBOX_LATENCY_MS", 0),
        # How long an order attempt holds its Idempotency-Key (or a renewal its period)
        # before a retry may take over from a process that died mid-way.
        "ORDER_LEASE": timedelta(seconds=_int(env, "ORDER_LEASE_SECONDS", 60)),
        "RENEWAL_GRACE": timedelta(days=_int(env, "RENEWAL_GRACE_DAYS", 7)),
        # Renew this long before the renewal date, so that licenses never lapse between two
        # cron runs (at least the cron interval: hourly by default).
        "RENEWAL_LEAD": timedelta(hours=_int(env, "RENEWAL_LEAD_HOURS", 2)),
    }


def rate_limit_settings(config: Mapping[str, Any]) -> list[str]:
    """The names of the per-route limits (`RATELIMIT_<ROUTE>_PER_<KEY>`) in a configuration."""
    return sorted(name for name in config if name.startswith("RATELIMIT_") and "_PER_" in name)


# Values published as examples or placeholders: long enough, known to everyone.
KNOWN_SECRETS = frozenset(
    {
        "development-only-placeholder-never-use-in-production",  # this project's old default
        "your-256-bit-secret",  # jwt.io's example
    }
)
# Words that a made-up or placeholder secret is written with, and runs a keyboard or an
# alphabet gives. None is 5 characters or fewer: a random secret contains one by chance
# with a probability of about 1e-7.
PLACEHOLDER_WORDS = (
    "secret", "change", "replace", "insecure", "password", "example", "default", "sample",
    "placeholder", "generate", "production", "correct", "qwerty", "asdfgh", "zxcvbn",
    "abcdef", "bcdefg", "cdefgh", "123456", "234567", "345678", "456789", "567890",
)  # fmt: skip
MIN_DISTINCT_CHARACTERS = 12  # a token_urlsafe(48) secret has ~45 of its 64 alphabet


def guessable(value: str) -> bool:
    """True for a secret that is long but guessable: a known placeholder, placeholder words
    or keyboard and alphabet runs, blanks or shell/markup text (an unexpanded `$(…)`, a
    `<…>`), letters only (a passphrase), too few distinct characters, or a short pattern
    repeated. A secret made with `secrets.token_urlsafe(48)` or `token_hex(32)` never is."""
    folded = value.casefold()
    if any(known in value for known in KNOWN_SECRETS):
        return True
    if any(word in folded for word in PLACEHOLDER_WORDS):
        return True
    if any(c.isspace() or c in "$<>()'\"" for c in value) or value.isalpha():
        return True
    if len(set(value)) < MIN_DISTINCT_CHARACTERS:
        return True
    # A short pattern repeated ("changemechangeme…"), give or take its last character.
    n = len(value)
    return any(value[p : n - 1] == value[: n - 1 - p] for p in range(1, n // 2))


def secret_problems(config: Mapping[str, Any]) -> list[str]:
    """What is wrong with SECRET_KEY and JWT_SECRET_KEY (missing, short, guessable, or the
    same)."""
    problems = []
    for name in SECRETS:
        value = config.get(name) or ""
        if not value:
            problems.append(f"{name} is not set")
        elif len(value) < MIN_SECRET_LENGTH:
            problems.append(f"{name} is shorter than {MIN_SECRET_LENGTH} characters")
        elif guessable(value):
            problems.append(f"{name} is guessable (a placeholder, padding or a repeated pattern)")
    secret = config.get("SECRET_KEY")
    if secret and secret == config.get("JWT_SECRET_KEY"):
        problems.append("SECRET_KEY and JWT_SECRET_KEY must differ")
    return problems


GENERATE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"  # noqa: S105


def check_secrets(config: Mapping[str, Any]) -> None:
    """Refuse weak or missing secrets in any environment (tokens are signed with them)."""
    problems = secret_problems(config)
    if problems:
        raise ConfigError(
            "refusing to start: "
            + "; ".join(problems)
            + f". Generate a secret with: {GENERATE_SECRET}"
        )


def check_production(config: Mapping[str, Any]) -> None:
    """Refuse production settings that would be unsafe; raise ConfigError listing them all."""
    if config["APP_ENV"] != "production":
        return
    problems = secret_problems(config)
    if config.get("PAYMENT_PROVIDER") == "sandbox" and not config.get("ALLOW_SANDBOX_PAYMENTS"):
        problems.append("PAYMENT_PROVIDER is the sandbox (set ALLOW_SANDBOX_PAYMENTS=1 for a demo)")
    if not config.get("LICENSE_SIGNING_KEYS"):
        problems.append("LICENSE_SIGNING_KEYS is not set")
    if config.get("OWNERSHIP_GUARD") not in ("raise", "log", "off"):
        problems.append("OWNERSHIP_GUARD must be raise, log or off")
    if problems:
        raise ConfigError(
            "refusing to start with APP_ENV=production: "
            + "; ".join(problems)
            + f". Generate a secret with: {GENERATE_SECRET}; "
            + "a license signing key with: flask --app wsgi licenses generate-key PATH"
        )
