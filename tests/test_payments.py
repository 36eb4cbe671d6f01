"""PAYMENT_PROVIDER picks the gateway from a registry (entry points); unknown names fail at
start-up, not on the first order."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import update

from app import create_app
from app.auth.models import Subscription
from app.config import ConfigError
from app.kernel.db import get_session, transaction, utcnow
from app.kernel.ownership import OPERATOR, acting_as
from app.orders.payments import Charge, PaymentUnavailable, SandboxGateway
from tests.helpers import project_env, run_flask, sign_up

PROVIDER_MODULE = '''
"""A payment provider package, as a vendor would install it."""
import json
from pathlib import Path

from app.orders.payments import Charge, Refund


class RecordingGateway:
    """Charges everything; writes each call to RECORDING_GATEWAY_LOG."""

    def __init__(self, log):
        self.log = Path(log)

    def _note(self, **call):
        with self.log.open("a") as f:
            f.write(json.dumps(call) + "\\n")

    def charge(self, *, amount_cents, currency, payment_method, idempotency_key):
        self._note(op="charge", amount_cents=amount_cents, key=idempotency_key)
        return Charge("ch_rec_" + idempotency_key[-8:], amount_cents, currency)

    def refund(self, *, charge_id, amount_cents, idempotency_key):
        self._note(op="refund", amount_cents=amount_cents, key=idempotency_key)
        return Refund("re_rec_" + idempotency_key[-8:], charge_id, amount_cents)


def from_config(config):
    return RecordingGateway(config["RECORDING_GATEWAY_LOG"])
'''


def install_provider(folder: Path) -> Path:
    """A package `recording_provider` whose distribution declares the entry point
    `licensing.payment_providers: recording`, importable from `folder`."""
    folder.mkdir()
    (folder / "recording_provider.py").write_text(PROVIDER_MODULE)
    dist = folder / "recording_provider-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: recording-provider\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [licensing.payment_providers]
            recording = recording_provider:from_config
            """
        )
    )
    return folder


@pytest.fixture
def provider_on_path(tmp_path, monkeypatch):
    folder = install_provider(tmp_path / "site")
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop("recording_provider", None)


def test_an_installed_provider_takes_the_orders(app_config, provider_on_path, tmp_path):
    log = tmp_path / "gateway.jsonl"
    app = create_app({**app_config, "PAYMENT_PROVIDER": "recording", "RECORDING_GATEWAY_LOG": log})
    try:
        client = app.test_client()
        pair = sign_up(client, "a@example.com")
        response = client.post(
            "/api/v1/orders",
            json={"plan": "pro", "seats": 2, "payment_token": "tok_anything"},
            headers={**pair.headers, "Idempotency-Key": "k1"},
        )
        assert response.status_code == 201, response.get_json()
        assert len(log.read_text().splitlines()) == 1
        # Renewals (the CLI) charge through the same provider.
        with app.app_context(), acting_as(OPERATOR):
            session = get_session()
            with transaction(session):
                session.execute(update(Subscription).values(renews_at=utcnow()))
        result = app.test_cli_runner().invoke(args=["subscriptions", "renew"])
        assert "renewed 1" in result.output, result.output
    finally:
        app.extensions["db"].dispose()
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(c["op"], c["amount_cents"]) for c in calls] == [("charge", 1800), ("charge", 1800)]
    assert not Path(app_config["SANDBOX_LEDGER"]).exists()  # the sandbox was not used


def test_an_unknown_provider_fails_in_create_app(app_config):
    with pytest.raises(ConfigError, match=r"unknown PAYMENT_PROVIDER 'stripe'.*sandbox"):
        create_app({**app_config, "PAYMENT_PROVIDER": "stripe"})


def test_a_provider_that_cannot_be_loaded_fails_in_create_app(app_config, tmp_path, monkeypatch):
    folder = install_provider(tmp_path / "site")
    (folder / "recording_provider.py").write_text("raise ImportError('missing SDK')\n")
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(ConfigError, match="PAYMENT_PROVIDER 'recording' cannot be loaded"):
        create_app({**app_config, "PAYMENT_PROVIDER": "recording"})


def start_errors(tmp_path: Path, *command: str, **settings: str) -> list[str]:
    """The lines a `flask` command prints when it refuses to start (exit code 2)."""
    env = project_env(APP_ENV="testing", DATABASE_URL=f"sqlite:///{tmp_path}/app.db", **settings)
    result = run_flask(*command, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    return result.stderr.strip().splitlines()


@pytest.mark.slow
def test_an_unknown_provider_is_a_one_line_error_at_start(tmp_path):
    assert start_errors(tmp_path, "db", "current", PAYMENT_PROVIDER="stripe") == [
        "error: unknown PAYMENT_PROVIDER 'stripe'; installed providers: sandbox"
    ]


BAD_CATALOGS = [
    "{bad",
    '{"plan": "pro"}',
    '[{"plan": "pro", "seats": 3, "max_seats": 50, "price_cents": -1, "currency": "EUR",'
    ' "period_days": 30}]',
    '[{"plan": "pro", "seats": "3", "max_seats": 50, "price_cents": 900, "currency": "EUR",'
    ' "period_days": 30}]',
    '[{"plan": "pro", "seats": 3, "max_seats": 2, "price_cents": 900, "currency": "EUR",'
    ' "period_days": 30}]',
    # second outside test: numbers that overflow dates or amounts, names, an empty catalog
    '[{"plan": "pro", "seats": 3, "max_seats": 50, "price_cents": 900, "currency": "EUR",'
    ' "period_days": 3000000}]',
    '[{"plan": "pro", "seats": 1, "max_seats": 2000000000, "price_cents": 9000000000000000000,'
    ' "currency": "EUR", "period_days": 30}]',
    "[]",
    '[{"plan": "", "seats": 1, "max_seats": 5, "price_cents": 900, "currency": "EUR",'
    ' "period_days": 30}]',
    '[{"plan": "pro", "seats": 1, "max_seats": 5, "price_cents": 900, "currency": "eur",'
    ' "period_days": 30}]',
    '[{"plan": "pro", "seats": 1, "max_seats": 5, "price_cents": 900, "currency": "EUR",'
    ' "period_days": 30}, {"plan": "pro", "seats": 1, "max_seats": 5, "price_cents": 100,'
    ' "currency": "EUR", "period_days": 30}]',
]


@pytest.mark.parametrize("plans_json", BAD_CATALOGS)
def test_a_bad_plan_catalog_fails_in_create_app(app_config, plans_json):
    """A bad PLANS_JSON made GET /plans and every order 500 behind a green /readyz
    (outside test): it stops the start, as an unknown provider does."""
    with pytest.raises(ConfigError, match="PLANS_JSON"):
        create_app({**app_config, "PLANS_JSON": plans_json})


@pytest.mark.slow
def test_a_bad_plan_catalog_is_a_one_line_error_at_start(tmp_path):
    [line] = start_errors(tmp_path, "subscriptions", "renew", PLANS_JSON="{bad")
    assert line.startswith("error: PLANS_JSON"), line


def _charge(gateway: SandboxGateway, key: str, cents: int = 4900, currency: str = "usd") -> Charge:
    """A card the sandbox accepts, charged `cents` once per `key`."""
    return gateway.charge(
        amount_cents=cents, currency=currency, payment_method="tok_ok", idempotency_key=key
    )


def test_sandbox_gateways_share_one_ledger_each_reading_what_the_others_wrote(tmp_path):
    """Each worker's gateway keeps what it has read of the ledger and reads only what was
    appended since: a charge or refund made through another one is still seen (same key,
    same charge; a refund shows), and a ledger replaced or cut short is read afresh."""
    ledger = tmp_path / "sandbox" / "ledger.jsonl"
    first, second = SandboxGateway(ledger), SandboxGateway(ledger)
    charge = _charge(first, "order-1", 900, "EUR")
    assert (
        _charge(second, "order-1", 900, "EUR") == charge
    )  # the second gateway had read nothing yet: it reads the line first wrote
    other = _charge(second, "order-2", 500, "EUR")
    refund = first.refund(charge_id=other.charge_id, amount_cents=500, idempotency_key="r-2")
    assert second.refund(charge_id=other.charge_id, amount_cents=500, idempotency_key="r-2") == (
        refund
    )
    again = _charge(second, "order-2", 500, "EUR")
    assert again == Charge(other.charge_id, 500, "EUR", refunded=True)
    assert [e["type"] for e in first.entries()] == ["charge", "charge", "refund"]

    # A ledger started over (deleted, then written by another process): nothing old counts.
    ledger.unlink()
    _charge(SandboxGateway(ledger), "order-9", 100, "EUR")
    fresh = _charge(first, "order-1", 900, "EUR")
    assert fresh.charge_id != charge.charge_id
    with pytest.raises(PaymentUnavailable):
        second.refund(charge_id=other.charge_id, amount_cents=500, idempotency_key="r-3")
    assert [e["idempotency_key"] for e in second.entries()] == ["order-9", "order-1"]


def test_a_torn_ledger_line_does_not_stop_later_charges_and_refunds(tmp_path):
    """A crash (or a full disk) mid-append leaves half a line at the ledger's end. The next
    entry starts on a line of its own, and every reader — this process, a restarted one,
    `entries()` — skips the fragment instead of failing every payment after it."""
    ledger = tmp_path / "ledger.jsonl"
    gateway = SandboxGateway(ledger)
    first = _charge(gateway, "k1", 900, "EUR")
    with open(ledger, "a") as file:
        file.write('{"type": "charge", "idempotency_key": "ord_torn')

    second = _charge(gateway, "k2", 2700, "EUR")
    refund = gateway.refund(charge_id=second.charge_id, amount_cents=2700, idempotency_key="r2")
    assert refund.charge_id == second.charge_id

    restarted = SandboxGateway(ledger)
    again = _charge(restarted, "k2", 2700, "EUR")
    assert again.charge_id == second.charge_id and again.refunded
    assert (
        restarted.refund(
            charge_id=first.charge_id, amount_cents=900, idempotency_key="r1"
        ).charge_id
        == first.charge_id
    )
    kinds = [(e["type"], e["idempotency_key"]) for e in restarted.entries()]
    assert kinds == [("charge", "k1"), ("charge", "k2"), ("refund", "r2"), ("refund", "r1")]


def test_the_sandbox_remembers_each_payment_in_little_memory(tmp_path):
    """Every worker indexes every payment of the shared ledger (to answer a retried charge or
    refund the same): what it keeps per payment is the answer, not the decoded line — a
    worker's memory grows with the ledger by a fraction of a KiB per order."""
    import tracemalloc

    writer = SandboxGateway(tmp_path / "ledger.jsonl")
    keys = [f"order-{i:06d}-0123456789abcdef" for i in range(2000)]
    charges = [_charge(writer, k) for k in keys]
    for charge in charges[:500]:
        writer.refund(
            charge_id=charge.charge_id, amount_cents=4900, idempotency_key=charge.charge_id
        )
    reader = SandboxGateway(tmp_path / "ledger.jsonl")  # another worker: reads the ledger
    tracemalloc.start()
    again = _charge(reader, keys[0])
    held, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert again == Charge(charges[0].charge_id, 4900, "usd", refunded=True)
    assert _charge(reader, keys[-1]) == Charge(charges[-1].charge_id, 4900, "usd", refunded=False)
    assert held / 2500 < 400  # bytes per payment (the decoded lines took ~900)


def test_a_ledger_line_of_another_type_is_skipped(tmp_path):
    """A line the sandbox does not know (a note an operator added, a later version's entry)
    is passed over, as before the index kept answers: purchases go on (the outside test:
    every purchase answered 500 with KeyError)."""
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text(json.dumps({"type": "note", "text": "checked by ops"}) + "\n")
    gateway = SandboxGateway(ledger)
    charge = _charge(gateway, "k-1")
    assert _charge(gateway, "k-1") == charge


@pytest.mark.parametrize(
    "line",
    [
        {"type": "charge"},
        {"type": "refund"},
        {"type": "charge", "idempotency_key": "k-0", "charge_id": 5},
        {
            "type": "charge",
            "idempotency_key": "k-0",
            "charge_id": "ch_x",
            "amount_cents": 1,
            "currency": 5,
        },
    ],
)
def test_a_malformed_ledger_line_is_skipped_with_a_warning(tmp_path, caplog, line):
    """A charge or refund line missing what the gateway answers with (hand-edited, or cut by
    a tool) is passed over with a warning, like a torn line (the re-check: every purchase
    answered 500 with KeyError until the line was removed)."""
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text(json.dumps(line) + "\n")
    gateway = SandboxGateway(ledger)
    charge = _charge(gateway, "k-1")
    assert charge.amount_cents == 4900
    assert "malformed" in caplog.text
