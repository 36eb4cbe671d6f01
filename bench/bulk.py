"""Bulk rows for the benchmark's databases: N accounts with one license each and M audit
entries (bench/seed.py's `bulk` command).

Written with INSERT … SELECT statements built from the service's models (SQLAlchemy Core
over `User`, `License`, `AuditLog`), executed through the service's engine with the
ownership guard on, each module writing only its own tables. Ids have the service's format
(prefix + 26-character ULID, time-sortable) and timestamps its storage format. Generating
rows in the database is what makes 1,000,000 users and 10,000,000 audit entries a
one-minute job; the rows are the shape the service itself writes. On PostgreSQL (small N
only) rows are built in Python and inserted with Core.
"""

from __future__ import annotations

import random
import sys
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    String,
    bindparam,
    case,
    cast,
    event,
    func,
    insert,
    literal,
    literal_column,
    select,
)

from app.admin.models import AuditLog
from app.auth.models import License, User
from app.kernel.db import get_database, get_session, transaction
from app.kernel.ownership import OPERATOR, acting_as

SCALE_DOMAIN = "scale.example"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
USER_COLUMNS = (
    *("user_id", "email", "password_hash", "plan", "role", "failed_logins"),
    *("created_at", "updated_at"),
)
LICENSE_COLUMNS = (
    *("license_id", "user_id", "client_id", "status"),
    *("created_at", "updated_at", "expires_at", "version"),
)
AUDIT_ACTIONS = (
    "LICENSE_CREATED",
    "LICENSE_CREATED",
    "LICENSE_CREATED",
    "LOGIN_SUCCEEDED",
    "LOGIN_SUCCEEDED",
    "LOGIN_SUCCEEDED",
    "LOGIN_SUCCEEDED",
    "LICENSE_STATUS_CHANGED",
    "USER_REGISTERED",
    "ORDER_PAID",
)


# --- bulk rows, generated in SQLite ---------------------------------------------------


def _ulid(ms):
    """A ULID of the millisecond-time column `ms`: 48-bit time as 10 Crockford base-32
    digits, then 64 random bits as 16 hex digits (hex digits are Crockford digits too).
    Time-sortable like the service's ids."""
    alphabet = literal(CROCKFORD)
    out = None
    for k in reversed(range(10)):
        digit = func.substr(alphabet, ms // (32**k) % 32 + 1, 1)
        out = digit if out is None else out.op("||")(digit)
    return out.op("||")(func.hex(func.randomblob(8)))


def _sqlite_time(ms):
    """Milliseconds since the epoch as SQLAlchemy stores a DateTime on SQLite."""
    text = func.strftime("%Y-%m-%d %H:%M:%S", ms // 1000, "unixepoch")
    return text.op("||")(func.printf(".%06d", ms % 1000 * 1000))


def _numbers(count: int, start_ms: int, step_ms: int):
    """A recursive CTE of (n, ms) for n = 1..count, ms = start_ms + n * step_ms (carried
    as a column, so each row computes it once)."""
    first = select(literal(1).label("n"), literal(start_ms + step_ms).label("ms"))
    seq = first.cte("seq", recursive=True)
    return seq.union_all(select(seq.c.n + 1, seq.c.ms + step_ms).where(seq.c.n < count))


def _progress(message: str, started: float) -> None:
    print(f"  seed: {message} ({time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)


def _span(now: datetime, days: int) -> tuple[int, int]:
    end = int(now.timestamp() * 1000)
    return end - days * 86_400_000, end


def bulk_sqlite(users: int, audit: int, password_hash: str) -> None:
    """`users` accounts with one license each, and `audit` audit entries (SQLite)."""
    database = get_database()
    engine = database.engine
    now = datetime.now(UTC)
    start, end = _span(now, 730)
    step = max(1, (end - start - 3_600_000) // users)
    engine.dispose()

    @event.listens_for(engine, "connect")
    def _bulk_load(dbapi_connection, _record) -> None:
        # A bulk load into a new file: no journal (the template is only used once it is
        # complete), a big page cache. The served copy is put back in WAL mode by the app.
        dbapi_connection.execute("PRAGMA journal_mode=OFF")
        dbapi_connection.execute("PRAGMA synchronous=OFF")
        dbapi_connection.execute("PRAGMA cache_size=-1000000")

    seq = _numbers(users, start, step)
    n = seq.c.n
    plan = case((n % 20 == 0, "enterprise"), (n % 20 < 4, "pro"), else_="free")
    users_stmt = insert(User).from_select(
        USER_COLUMNS,
        select(
            literal("usr_").op("||")(_ulid(seq.c.ms)),
            literal("user").op("||")(cast(n, String)).op("||")(f"@{SCALE_DOMAIN}"),
            bindparam("hash", password_hash),
            plan,
            literal("user"),
            literal(0),
            _sqlite_time(seq.c.ms),
            _sqlite_time(seq.c.ms),
        ),
    )
    # One license per scale user, issued an hour after sign-up: 90 % active, 5 % suspended,
    # 5 % revoked; live ones expire within the next year, so VALID is the common answer.
    seq = _numbers(users, start + 3_600_000, step)
    n = seq.c.n
    rowid = literal_column("users.rowid")
    expires = literal(end + 30 * 86_400_000) + (n * 7919) % (300 * 86_400_000)
    license_stmt = insert(License).from_select(
        LICENSE_COLUMNS,
        select(
            literal("lic_").op("||")(_ulid(seq.c.ms)),
            User.user_id,
            literal("scale-").op("||")(cast(n, String)),
            case((n % 20 == 7, "suspended"), (n % 20 == 13, "revoked"), else_="active"),
            _sqlite_time(seq.c.ms),
            _sqlite_time(seq.c.ms),
            _sqlite_time(expires),
            literal(1),
        ).join_from(seq, User, rowid == n),
    )
    started = time.monotonic()
    session = database.sessions()
    with acting_as("auth"), transaction(session):
        session.execute(users_stmt)
        _progress(f"{users:,} users", started)
        session.execute(license_stmt)
        _progress(f"{users:,} licenses", started)
    session.close()

    if audit:
        indexes = list(AuditLog.__table__.indexes)
        with engine.connect() as conn, acting_as(OPERATOR):
            for index in indexes:  # one sorted build at the end beats 10M random inserts
                index.drop(conn, checkfirst=True)
            conn.commit()
        a_start, a_end = _span(now, 365)
        seq = _numbers(audit, a_start, max(1, (a_end - a_start) // audit))
        n = seq.c.n
        who = 1 + (n * 7919) % users  # the user's rowid
        who_id = select(User.user_id).where(rowid == who).scalar_subquery()
        actions = case(
            *[(n % len(AUDIT_ACTIONS) == i, a) for i, a in enumerate(AUDIT_ACTIONS)],
            else_=AUDIT_ACTIONS[0],
        )
        details = func.json_object("client_id", literal("scale-").op("||")(cast(who, String)))
        audit_stmt = insert(AuditLog).from_select(
            ["log_id", "user_id", "actor_id", "action", "details", "ip_address", "timestamp"],
            select(
                literal("log_").op("||")(_ulid(seq.c.ms)),
                who_id,
                who_id,
                actions,
                details,
                literal("198.51.100.").op("||")(cast(n % 250 + 1, String)),
                _sqlite_time(seq.c.ms),
            ),
        )
        session = database.sessions()
        with acting_as("admin"), transaction(session):
            session.execute(audit_stmt)
        session.close()
        _progress(f"{audit:,} audit entries", started)
        with engine.connect() as conn, acting_as(OPERATOR):
            for index in indexes:
                index.create(conn)
                _progress(f"index {index.name}", started)
            conn.commit()
    event.remove(engine, "connect", _bulk_load)
    engine.dispose()
    raw = engine.raw_connection()  # WAL again, as the service runs it (outside a BEGIN)
    try:
        raw.driver_connection.execute("PRAGMA journal_mode=WAL")
    finally:
        raw.close()


def bulk_python(users: int, audit: int, password_hash: str) -> None:
    """The same rows, built in Python and inserted with Core (any backend; small N)."""
    from ulid import ULID

    now = datetime.now(UTC)
    rng = random.Random(7)
    user_rows, license_rows = [], []
    for n in range(1, users + 1):
        created = now - timedelta(days=730) + timedelta(seconds=n * 60)
        user_id = f"usr_{ULID.from_datetime(created)}"
        plan = "enterprise" if n % 20 == 0 else "pro" if n % 20 < 4 else "free"
        user_rows.append(
            dict(
                user_id=user_id,
                email=f"user{n}@{SCALE_DOMAIN}",
                password_hash=password_hash,
                plan=plan,
                role="user",
                failed_logins=0,
                created_at=created,
                updated_at=created,
            )
        )
        status = "suspended" if n % 20 == 7 else "revoked" if n % 20 == 13 else "active"
        issued = created + timedelta(hours=1)
        license_rows.append(
            dict(
                license_id=f"lic_{ULID.from_datetime(issued)}",
                user_id=user_id,
                client_id=f"scale-{n}",
                status=status,
                created_at=issued,
                updated_at=issued,
                expires_at=now + timedelta(days=30 + rng.randrange(300)),
                version=1,
            )
        )
    audit_rows = []
    for n in range(1, audit + 1):
        at = now - timedelta(days=365) + timedelta(seconds=n * 30)
        who = user_rows[(n * 7919) % users]
        audit_rows.append(
            dict(
                log_id=f"log_{ULID.from_datetime(at)}",
                user_id=who["user_id"],
                actor_id=who["user_id"],
                action=AUDIT_ACTIONS[n % len(AUDIT_ACTIONS)],
                details={"client_id": who["email"]},
                ip_address=f"198.51.100.{n % 250 + 1}",
                timestamp=at,
            )
        )
    session = get_session()
    with acting_as("auth"), transaction(session):
        session.execute(insert(User), user_rows)
        session.execute(insert(License), license_rows)
    with acting_as("admin"), transaction(session):
        if audit_rows:
            session.execute(insert(AuditLog), audit_rows)
