"""Crash safety: SIGKILL gunicorn workers, then the whole server, in the middle of sustained
activations and orders. Afterwards the database passes its integrity check, every success a
client received has its rows and its audit entry, no license exists without its audit entry,
and — once clients retry what got no answer, as they should — every charge belongs to a paid
order exactly once."""

from __future__ import annotations

import contextlib
import http.client as http_client
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from app.admin.models import AuditLog
from app.auth.models import License
from app.orders.models import Order
from tests.helpers import db_rows, gunicorn_server, http, sign_up_over_http, soak_report

pytestmark = pytest.mark.slow
USERS = int(os.environ.get("CRASH_USERS", "30"))


def _workers(master: subprocess.Popen) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def _try(load: Load, method: str, url: str, body: dict, headers: dict) -> tuple[int, dict | None]:
    """One request; a connection cut by a kill is status 0 (no answer)."""
    try:
        status, answer, _ = http(method, url, body, headers)
    except (OSError, http_client.HTTPException):  # refused, reset, or cut mid-answer
        with load.lock:
            load.unanswered += 1
        return 0, None
    return status, answer


class Load:
    """Users who each activate a license and buy a plan, from several threads at once,
    remembering exactly which requests were answered with success."""

    def __init__(self, users: list[dict]) -> None:
        self.users = users
        self.base = ""
        self.acked_licenses: dict[str, str] = {}  # user_id -> license_id
        self.acked_orders: dict[str, str] = {}  # idempotency key -> order_id
        self.unanswered = 0  # requests a kill cut off: the client does not know the outcome
        self.errors: list[BaseException] = []  # what went wrong in a client thread
        self.lock = threading.Lock()

    def activate(self, user: dict) -> bool:
        status, body = _try(
            self,
            "POST",
            self.base + "/api/v1/licenses/activate",
            {"client_id": f"box-{user['n']}"},
            user["auth"],
        )
        if status in (200, 201):
            with self.lock:
                self.acked_licenses[user["user_id"]] = body["license_id"]
            return True
        assert status in (0, 503), (status, body)  # killed mid-request, or the db busy
        return False

    def order(self, user: dict) -> bool:
        key = f"order-{user['n']}"
        status, body = _try(
            self,
            "POST",
            self.base + "/api/v1/orders",
            {"plan": "pro", "seats": 2, "payment_token": "tok_ok"},
            {**user["auth"], "Idempotency-Key": key},
        )
        if status == 201:
            with self.lock:
                self.acked_orders[key] = body["order_id"]
            return True
        # killed mid-request; the db busy; or a retry while the dead attempt's lease runs
        assert status in (0, 409, 503), (status, body)
        return False

    def run(self, users: list[dict]) -> None:
        try:
            for user in users:
                self.activate(user)
                self.order(user)
        except BaseException as exc:  # an unexpected answer: the test fails with it
            self.errors.append(exc)


def _register(base: str, n: int) -> dict:
    account = sign_up_over_http(base, f"crash{n}@example.com")
    return {"n": n, "user_id": account.user_id, "auth": account.headers}


def _licenses_each_with_one_entry(url: str) -> set[str]:
    """The licenses in the database; each has exactly one LICENSE_CREATED entry, and no
    entry names a license that does not exist."""
    licenses = {r.license_id for r in db_rows(url, select(License.license_id))}
    created = Counter(
        r.details["license_id"]
        for r in db_rows(url, select(AuditLog).where(AuditLog.action == "LICENSE_CREATED"))
    )
    assert created == Counter(licenses)
    return licenses


def _kill_server(master: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(master.pid, signal.SIGKILL)
    master.wait()


def test_sigkill_workers_and_the_server_mid_load_loses_nothing_acknowledged(
    database_url, signing_key_file, tmp_path, backend
):
    ledger = tmp_path / "ledger.jsonl"
    env = {
        "LICENSE_SIGNING_KEYS": signing_key_file,
        "SANDBOX_LEDGER": str(ledger),
        "SANDBOX_LATENCY_MS": "30",  # money moves before the answer: a window for the kills
        "ORDER_LEASE_SECONDS": "1",  # a retry takes over a dead attempt's key soon
    }
    masters: list[subprocess.Popen] = []
    with gunicorn_server(database_url, workers=3, processes=masters, **env) as base:
        users = [_register(base, n) for n in range(USERS)]
        load = Load(users)
        load.base = base
        chunks = [users[i::4] for i in range(4)]
        threads = [threading.Thread(target=load.run, args=(chunk,)) for chunk in chunks]
        for thread in threads:
            thread.start()
        kills = 0
        for target in (USERS // 5, USERS // 2):  # two workers, each at a busy moment
            while len(load.acked_licenses) < target and any(t.is_alive() for t in threads):
                time.sleep(0.01)
            victims = _workers(masters[0])
            if victims:
                os.kill(victims[0], signal.SIGKILL)
                kills += 1
        while len(load.acked_licenses) < USERS * 3 // 4 and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        _kill_server(masters[0])  # the whole server, mid-flight
        for thread in threads:
            thread.join(timeout=120)
    assert kills == 2
    assert not load.errors, load.errors
    assert load.unanswered >= 1, "the kills cut no request off: nothing was tested"
    killed_mid_flight = load.unanswered

    if backend == "sqlite":
        path = database_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    # Every success the clients saw survived the kills, with its audit entry.
    licenses = _licenses_each_with_one_entry(database_url)
    assert set(load.acked_licenses.values()) <= licenses
    orders = {r.order_id: r for r in db_rows(database_url, select(Order))}
    for order_id in load.acked_orders.values():
        assert orders[order_id].status == "paid"

    # The clients retry what got no answer, with the same keys, against a new server.
    with gunicorn_server(database_url, workers=2, **env) as base:
        load.base = base
        deadline = time.monotonic() + 60
        for user in users:
            while user["user_id"] not in load.acked_licenses and time.monotonic() < deadline:
                if not load.activate(user):
                    time.sleep(0.2)
            while f"order-{user['n']}" not in load.acked_orders and time.monotonic() < deadline:
                if not load.order(user):
                    time.sleep(0.3)
    assert len(load.acked_licenses) == USERS and len(load.acked_orders) == USERS

    orders = {r.order_id: r for r in db_rows(database_url, select(Order))}
    paid = {oid for oid, o in orders.items() if o.status == "paid"}
    assert set(load.acked_orders.values()) == paid  # one paid order per key, no strays
    ledger_entries = [json.loads(line) for line in Path(ledger).read_text().splitlines()]
    charges = Counter(e["idempotency_key"] for e in ledger_entries if e["type"] == "charge")
    refunded = {e["charge_id"] for e in ledger_entries if e["type"] == "refund"}
    unrefunded = {
        e["idempotency_key"]
        for e in ledger_entries
        if e["type"] == "charge" and e["charge_id"] not in refunded
    }
    assert all(count == 1 for count in charges.values())  # nobody charged twice for one order
    assert unrefunded == paid  # money kept exactly for the paid orders
    paid_audits = Counter(
        r.details["order_id"]
        for r in db_rows(database_url, select(AuditLog).where(AuditLog.action == "ORDER_PAID"))
    )
    assert paid_audits == Counter(paid)
    licenses = _licenses_each_with_one_entry(database_url)
    soak_report(
        f"crash ({backend})",
        f"{USERS} users x (activation + order), 2 workers and the server SIGKILLed, "
        f"{killed_mid_flight} requests cut off",
        f"{len(licenses)} licenses and {len(paid)} paid orders, each with its audit entry; "
        "one charge per order",
    )
