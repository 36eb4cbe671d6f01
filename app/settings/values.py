"""The kinds of value settings take, and `env()`, which declares a setting.

Each check raises ValueError with a phrase that reads after the variable's name
("DB_POOL_SIZE must be at least 1"); `app.settings.describe` puts them on one line.
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

ENVIRONMENTS = ("development", "production", "testing")
GUARD_MODES = ("raise", "log", "off")
# Phase 3 (docs/phases.md): the module that may run on its own database. auth and orders share
# transactions with each other (a paid order grants a subscription), so they stay together.
SEPARABLE_MODULES = ("admin",)
INT32 = 2**31 - 1
HOST_NAME = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
)  # PostgreSQL's timeouts are 32-bit milliseconds


def env(
    name: str,
    default: Any,
    doc: str,
    *,
    key: str | None = None,
    shown: str | None = None,
    echo: bool = True,
    **constraints: Any,
) -> Any:
    """A setting read from the environment variable `name` (empty counts as unset).

    `key`: its app.config key when not `name`; `shown`: its default as the docs show it
    (when it is computed); `echo=False`: never repeat its value in an error (secrets, URLs
    that may hold a password, long JSON)."""
    return Field(
        default,
        validation_alias=name,
        description=doc,
        repr=echo,
        json_schema_extra={"env": name, "key": key or name, "shown": shown, "echo": echo},
        **constraints,
    )


# --- value types -----------------------------------------------------------------------


def _duration(unit: str, seconds: int, low: int, high: int) -> Any:
    """A timedelta given in whole `unit`s (the environment) or as a timedelta (overrides)."""

    def parse(value: Any) -> Any:
        if isinstance(value, timedelta):
            return value
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ValueError(f"must be a whole number of {unit}, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high:,} {unit}, got {number}")
        return timedelta(seconds=number * seconds)

    return Annotated[timedelta, BeforeValidator(parse)]


Seconds = _duration("seconds", 1, 1, 10 * 366 * 86400)
Minutes = _duration("minutes", 60, 1, 366 * 24 * 60)
Hours = _duration("hours", 3600, 0, 366 * 24)
PositiveHours = _duration("hours", 3600, 1, 366 * 24)
Days = _duration("days", 86400, 1, 3660)


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _rate_limit(value: Any) -> Any:
    """flask-limiter's syntax (`10/minute;100/hour`), checked here rather than on the first
    request of the route it limits."""
    from limits import parse_many

    if isinstance(value, str):
        try:
            items = parse_many(value)
        except ValueError:
            raise ValueError(
                f"is not a rate limit like 10/minute;100/hour, got {value!r}"
            ) from None
        if any(item.amount < 1 for item in items):  # 0/minute: every request is a 429
            raise ValueError(
                "must allow at least one request in each period (0 refuses every request), "
                f"got {value!r}"
            )
        # A counter's window is its expiry in Redis: none (5/0 minutes), or one longer than
        # Redis keeps (1/300000000 years: the script counted, then failed to set the expiry,
        # and the route refused every request for good).
        for item in items:
            expiry = item.get_expiry()
            if _NO_TIME.search(value) or not 1 <= expiry <= _LONGEST_WINDOW:
                # (limits reads "5/0 minutes" as 5/minute: refused, not guessed)
                why = (
                    "a window longer than a year"
                    if expiry > _LONGEST_WINDOW
                    else "a window of no time"
                )
                raise ValueError(
                    f"must count over a period of one second to one year, got {value!r} ({why})"
                )
    return value


_LONGEST_WINDOW = 366 * 24 * 3600  # seconds: `1/year` is limits' year (and a leap one fits)
_NO_TIME = re.compile(r"(/|\bper\b)\s*0+\s*[A-Za-z]", re.I)  # 0 units: 5/0 minutes, 5 per 0 minutes


def networks(value: Any) -> Any:
    """A comma-separated list of addresses or networks (checked here, used as text)."""
    if isinstance(value, str):
        for item in value.split(","):
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"must be addresses or networks, comma-separated: {item.strip()!r} is not one"
                ) from None
    return value


def bind_address(value: Any) -> Any:
    """An address to bind: an IP address or a host name."""
    if isinstance(value, str):
        try:
            ipaddress.ip_address(value.strip("[]"))
        except ValueError:
            if not HOST_NAME.match(value):
                raise ValueError("must be an IP address or a host name") from None
    return value


def addresses_or_any(value: Any) -> Any:
    """gunicorn's `forwarded_allow_ips`: `*`, or addresses and networks."""
    return value if value == "*" else networks(value)


def redis_url(value: Any) -> Any:
    """A URL redis-py reads (`redis.from_url`): its scheme, port and query options checked
    here, not by the first connection. Errors never repeat the URL (it may hold a password)."""
    from urllib.parse import urlsplit

    from redis.connection import parse_url

    if not isinstance(value, str):
        return value
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be redis://…, rediss://… or unix://…")
    parts = urlsplit(value)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(": unix:// needs the socket's path (unix:///run/redis/redis.sock)")
    else:
        try:
            port = parts.port
        except ValueError:  # not a number, or beyond 65535
            raise ValueError(BAD_PORT) from None
        if port == 0:
            raise ValueError(BAD_PORT)
    try:
        parse_url(value)
    except ValueError as exc:
        option = re.search(r"Invalid value for '([^']+)'", str(exc))
        if option:
            raise ValueError(
                f": the {option.group(1)} option has a value redis-py cannot read"
            ) from None
        raise ValueError(": redis-py cannot read it") from None
    return value


# A phrase that starts with ":" follows the variable's name directly ("DATABASE_URL: port…").
BAD_PORT = ": port must be a number 1-65535"


def check_database_url(url: str) -> str:
    """Refuse a URL the app cannot use (ValueError); return its backend (`sqlite` or
    `postgresql`)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError("is not a database URL (sqlite:///… or postgresql://…)") from None
    except ValueError:  # int(port) failed; its message would say only "invalid literal"
        raise ValueError(BAD_PORT) from None
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ValueError(BAD_PORT)
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "postgres"):
        raise ValueError(f"must be sqlite:///… or postgresql://…, not {backend}://")
    # One driver per backend, the one the engines, migrations and backups all use:
    # postgres:// and postgresql:// (with or without +psycopg) mean psycopg 3.
    _, _, driver = parsed.drivername.partition("+")
    if driver not in ("", "pysqlite" if backend == "sqlite" else "psycopg"):
        raise ValueError(
            f"names the {parsed.drivername} driver: that driver is not supported; "
            + ("write sqlite:///…" if backend == "sqlite" else "write postgresql://… (psycopg 3)")
        )
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError(
            "must name a SQLite file (sqlite:///path/app.db): an in-memory "
            "database is private to each connection and each worker"
        )
    return "postgresql" if backend == "postgres" else backend


def file_path(value: Any) -> Any:
    """A file the service writes (it may not exist yet): not a folder."""
    if isinstance(value, str) and os.path.isdir(value):
        raise ValueError(f"must name a file, but {value} is a folder")
    return value


def folder_path(value: Any) -> Any:
    """A folder the service writes into (it may not exist yet): not a file."""
    if isinstance(value, str) and os.path.exists(value) and not os.path.isdir(value):
        raise ValueError(f"must name a folder, but {value} is a file")
    return value


def _database_url(value: Any) -> Any:
    if isinstance(value, str):
        check_database_url(value)
    return value


def not_separable(value: Any) -> Any:
    if value:
        raise ValueError(
            f"is refused: only {', '.join(SEPARABLE_MODULES)} can run on its own database "
            "(see docs/phases.md)"
        )
    return value


RateLimit = Annotated[str, BeforeValidator(_rate_limit)]
DatabaseURL = Annotated[str | None, BeforeValidator(_database_url)]
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
]
Identifier = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$", max_length=40)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


# --- the groups ----------------------------------------------------------------------


class Group(BaseModel):
    """A group of settings (a sub-model of Settings)."""

    model_config = ConfigDict(extra="forbid")


def env_name(field: Any) -> str:
    """The environment variable a setting is read from."""
    return field.json_schema_extra["env"]  # type: ignore[no-any-return]
