"""Seed benchmark databases through the service's own code, and write wrk's request files.

Run by the benchmark (bench/phases.py) in a child process with the server's environment
(same secrets and signing key), as `python -m bench.seed COMMAND …`:

- `bulk --users N --audit M` — N accounts, each holding one license, and M audit entries
  (bench/bulk.py: INSERT … SELECT statements built from the service's models).
- `accounts` — the accounts the load scenarios act as, created with the service's own
  functions (`auth.api.create_user`, `auth.api.grant_subscription`).
- `requests --out DIR` — request files for bench/load.lua: license tokens as the service
  issues them (`licensing.routes.license_token`) for licenses spread over the whole table,
  access tokens minted with the service's `issue_pair`. Reads only.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from sqlalchemy import and_, func, literal_column, select

from app import create_app
from app.auth import api as auth_api
from app.auth.accounts import tokens
from app.auth.licensing.routes import license_token
from app.auth.models import License, User
from app.kernel.db import get_database, get_session, transaction
from app.kernel.ownership import acting_as
from bench.bulk import bulk_python, bulk_sqlite

PASSWORD = "bench-password-1234"
ADMIN_EMAIL = "admin@bench.example"
ACTIVATE_USERS, LOGIN_USERS, ORDER_USERS = 32, 32, 64
ACTIVATE_SEATS = 1_000_000
TOKEN_SAMPLE = 20_000  # validate tokens per run, spread over the whole licenses table


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
                {"token": license_token(r, now), "client_id": r.client_id},
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
        (out / "healthz.txt").write_text(_line("GET", "/healthz", None, None) + "\n")
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
