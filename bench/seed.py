"""Seed benchmark databases through the service's own code, and write wrk's request files.

Run by `bench/run.py` in a child process with the server's environment (same secrets and
signing key), as `python -m bench.seed COMMAND …`:

- `bulk --users N --audit M` — N accounts, each holding one license, and M audit entries,
  written with INSERT … SELECT statements built from the service's models (SQLAlchemy Core
  over `User`, `License`, `AuditLog`), executed through the service's engine with the
  ownership guard on, each module writing only its own tables. Ids have the service's
  format (prefix + 26-character ULID, time-sortable) and timestamps its storage format.
  Generating rows in the database is what makes 1,000,000 users and 10,000,000 audit
  entries a one-minute job; the rows are the shape the service itself writes.
  On PostgreSQL (small N only) rows are built in Python and inserted with Core.
- `accounts` — the accounts the load scenarios act as, created with the service's own
  functions (`auth.api.create_user`, `auth.api.grant_subscription`).
- `requests --out DIR` — request files for bench/load.lua: license tokens signed with the
  service's `KeySet` for licenses spread over the whole table, access tokens minted with
  the service's `issue_pair`. Reads only.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from sqlalchemy import (
    String,
    and_,
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

from app import create_app
from app.admin.models import AuditLog
from app.auth import api as auth_api
from app.auth import signing, tokens
from app.auth.models import License, User
from app.kernel.db import get_database, get_session, transaction
from app.kernel.ownership import OPERATOR, acting_as

PASSWORD = "bench-password-1234"
ADMIN_EMAIL = "admin@bench.example"
SCALE_DOMAIN = "scale.example"
ACTIVATE_USERS, LOGIN_USERS, ORDER_USERS = 32, 32, 64
ACTIVATE_SEATS = 1_000_000
TOKEN_SAMPLE = 20_000  # validate tokens per run, spread over the whole licenses table
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


def cmd_bulk(args: argparse.Namespace) -> None:
    app = create_app()
    with app.app_context():
        password_hash = auth_api.hasher_from_config(app.config).hash(PASSWORD)
        if get_database().backend == "sqlite":
            bulk_sqlite(args.users, args.audit, password_hash)
        else:
            bulk_python(args.users, args.audit, password_hash)
        _create_admin(password_hash)
        get_database().dispose()


class _HashedOnce:
    """A hasher that hands out one precomputed argon2id hash (made with the service's own
    settings): every account has the same password, so hashing it once per account
    would only spend seeding time, not change what a login costs."""

    def __init__(self, password_hash: str) -> None:
        self.password_hash = password_hash

    def hash(self, _password: str) -> str:
        return self.password_hash


def _create_admin(password_hash: str) -> None:
    session = get_session()
    with transaction(session):
        auth_api.create_user(
            session, ADMIN_EMAIL, PASSWORD, hasher=_HashedOnce(password_hash), role="admin"
        )


# --- the scenario accounts --------------------------------------------------------------


def cmd_accounts(_args: argparse.Namespace) -> None:
    app = create_app()
    with app.app_context():
        hasher = _HashedOnce(auth_api.hasher_from_config(app.config).hash(PASSWORD))
        session = get_session()
        for kind, count in (("act", ACTIVATE_USERS), ("login", LOGIN_USERS)):
            with transaction(session):
                users = [
                    auth_api.create_user(
                        session, f"{kind}{i}@bench.example", PASSWORD, hasher=hasher
                    )
                    for i in range(count)
                ]
            if kind == "act":  # activations need free seats: a big enterprise subscription
                for user in users:
                    with transaction(session):
                        auth_api.grant_subscription(
                            session,
                            user.user_id,
                            plan="enterprise",
                            seats=ACTIVATE_SEATS,
                            period=timedelta(days=365),
                        )
        with transaction(session):
            for i in range(ORDER_USERS):
                auth_api.create_user(session, f"order{i}@bench.example", PASSWORD, hasher=hasher)
        get_database().dispose()


# --- request files for bench/load.lua -----------------------------------------------------


def _line(method: str, path: str, auth: str | None, body: object | None) -> str:
    """METHOD, PATH, Authorization (or -), JSON body (or -), tab-separated."""
    payload = "-" if body is None else json.dumps(body, separators=(",", ":"))
    return "\t".join((method, path, auth or "-", payload))


def _bearer(user_id: str, role: str = "user") -> str:
    pair = tokens.issue_pair(SimpleNamespace(user_id=user_id, role=role))
    return "Bearer " + pair["access_token"]


def _users_like(session, pattern: str) -> list[str]:
    rows = session.execute(
        select(User.user_id).where(User.email.like(pattern)).order_by(User.email)
    )
    return [r.user_id for r in rows]


def cmd_requests(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    app = create_app()
    rng = random.Random(args.seed)
    with app.app_context(), acting_as("auth"):
        session = get_session()
        keys = signing.license_keys()
        # Licenses spread over the whole table: rowids are dense after a bulk load; a
        # random sample of them (not the first N) makes every part of the B-tree hot.
        count = session.scalar(select(func.count()).select_from(License))
        now = datetime.now(UTC)
        live = and_(License.status == "active", License.expires_at > now)
        if get_database().backend == "sqlite":
            rowid = literal_column("licenses.rowid")
            wanted = sorted(rng.sample(range(1, count + 1), min(count, args.tokens * 2)))
            rows = []
            for i in range(0, len(wanted), 900):
                rows += session.execute(
                    select(License).where(rowid.in_(wanted[i : i + 900]), live)
                ).scalars()
        else:
            rows = list(
                session.scalars(
                    select(License).where(live).order_by(func.random()).limit(args.tokens)
                )
            )
        rng.shuffle(rows)
        rows = rows[: args.tokens]
        if not rows:
            sys.exit("no live licenses to validate")
        validate = [
            _line(
                "POST",
                "/api/v1/licenses/validate",
                None,
                {
                    "token": keys.sign(
                        license_id=r.license_id,
                        user_id=r.user_id,
                        client_id=r.client_id,
                        expires_at=r.expires_at,
                        issued_at=now,
                    ),
                    "client_id": r.client_id,
                },
            )
            for r in rows
        ]
        (out / "validate.txt").write_text("\n".join(validate) + "\n")

        admin_id = session.scalar(select(User.user_id).where(User.email == ADMIN_EMAIL))
        admin = _bearer(admin_id, "admin")
        (out / "admin_stats.txt").write_text(
            _line("GET", "/api/v1/admin/stats/licenses", admin, None)
            + "\n"
            + _line("GET", "/api/v1/admin/stats/users", admin, None)
            + "\n"
        )
        (out / "audit_search.txt").write_text(
            _line("GET", "/api/v1/admin/audit-logs?limit=20", admin, None)
            + "\n"
            + _line("GET", "/api/v1/admin/audit-logs?limit=20&action=LICENSE_CREATED", admin, None)
            + "\n"
        )
        activators = _users_like(session, "act%@bench.example")
        if activators:
            lines = [
                _line("POST", "/api/v1/licenses/activate", _bearer(u), {"client_id": "{seq}"})
                for u in activators
            ]
            (out / "activate.txt").write_text("\n".join(lines) + "\n")
            logins = [
                _line("POST", "/api/v1/auth/login", None, {"email": e, "password": PASSWORD})
                for e in (f"login{i}@bench.example" for i in range(LOGIN_USERS))
            ]
            (out / "login.txt").write_text("\n".join(logins) + "\n")
            order = {"plan": "pro", "seats": 3, "payment_token": "tok_ok"}
            orders = [
                _line("POST", "/api/v1/orders", _bearer(u), order)
                for u in _users_like(session, "order%@bench.example")
            ]
            (out / "order.txt").write_text("\n".join(orders) + "\n")
        (out / "baseline.txt").write_text(_line("GET", "/healthz", None, None) + "\n")
        print(json.dumps({"licenses": count, "tokens": len(rows)}))
        get_database().dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.seed")
    sub = parser.add_subparsers(dest="command", required=True)
    bulk = sub.add_parser("bulk", help="scale accounts, licenses and audit entries")
    bulk.add_argument("--users", type=int, required=True)
    bulk.add_argument("--audit", type=int, default=0)
    bulk.set_defaults(run=cmd_bulk)
    accounts = sub.add_parser("accounts", help="the accounts the scenarios act as")
    accounts.set_defaults(run=cmd_accounts)
    requests = sub.add_parser("requests", help="request files for bench/load.lua")
    requests.add_argument("--out", required=True)
    requests.add_argument("--tokens", type=int, default=TOKEN_SAMPLE)
    requests.add_argument("--seed", type=int, default=1)
    requests.set_defaults(run=cmd_requests)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
