"""The payment port, and the built-in `sandbox` provider.

A provider charges and refunds. Both calls take an idempotency key (the order id, or the
order id plus "refund"): asking twice never moves money twice — so a retry after a crash,
or two racing retries, cannot double-charge even before our own database is consulted.

The sandbox accepts `tok_ok`, declines `tok_declined` and is unavailable for
`tok_unavailable`. It keeps its ledger in a JSON-lines file, so every worker process (and
a test) sees the same charges.

Other providers are installed packages: `PAYMENT_PROVIDER=<name>` picks the one whose
distribution declares `<name>` in the `licensing.payment_providers` entry-point group.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from app.config import ConfigError
from app.kernel import files
from app.kernel.ids import new_id

log = logging.getLogger(__name__)


class PaymentDeclined(Exception):
    """The provider refused the payment (card declined, insufficient funds…)."""


class PaymentUnavailable(Exception):
    """The provider could not be reached or failed; nothing was charged."""


@dataclass(frozen=True)
class Charge:
    charge_id: str
    amount_cents: int
    currency: str
    refunded: bool = False


@dataclass(frozen=True)
class Refund:
    refund_id: str
    charge_id: str
    amount_cents: int


class PaymentGateway(Protocol):
    """What the orders service needs from a payment provider."""

    def charge(
        self, *, amount_cents: int, currency: str, payment_method: str, idempotency_key: str
    ) -> Charge:
        """Charge once per idempotency key; the same key returns the same charge."""
        ...

    def refund(self, *, charge_id: str, amount_cents: int, idempotency_key: str) -> Refund:
        """Refund once per idempotency key."""
        ...


class SandboxGateway:
    """A fake provider with a durable ledger, for development and tests."""

    def __init__(self, ledger: str | os.PathLike[str], *, latency: float = 0.0) -> None:
        self.ledger = Path(ledger)
        self.latency = latency  # seconds the "provider" takes to answer after charging
        self._index = _LedgerIndex()

    def charge(
        self, *, amount_cents: int, currency: str, payment_method: str, idempotency_key: str
    ) -> Charge:
        if payment_method == "tok_unavailable":
            raise PaymentUnavailable("sandbox: provider unavailable")
        with self._locked() as index:
            known = index.charges.get(idempotency_key)
            if known is not None:
                return Charge(*known, refunded=known[0] in index.refunded)
            if payment_method != "tok_ok":
                raise PaymentDeclined("sandbox: card declined")
            charge = Charge(new_id("ch"), amount_cents, currency)
            self._append({"type": "charge", "idempotency_key": idempotency_key, **asdict(charge)})
        if self.latency:
            time.sleep(self.latency)  # the money has moved; the answer is still on its way
        return charge

    def refund(self, *, charge_id: str, amount_cents: int, idempotency_key: str) -> Refund:
        with self._locked() as index:
            known = index.refunds.get(idempotency_key)
            if known is not None:
                return Refund(*known)
            if charge_id not in index.charge_ids:
                raise PaymentUnavailable(f"sandbox: no charge {charge_id}")
            refund = Refund(new_id("re"), charge_id, amount_cents)
            self._append({"type": "refund", "idempotency_key": idempotency_key, **asdict(refund)})
            return refund

    # The ledger: one JSON object per line, under an exclusive lock across processes;
    # private (0600 in a 0700 folder): it records every payment. Each gateway reads only
    # the lines other processes appended since it last looked, so a charge costs the same
    # however long the ledger has grown (re-reading it all made a run's orders quadratic).
    @contextmanager
    def _locked(self) -> Iterator[_LedgerIndex]:
        with files.open_private(self.ledger, "ab+") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                self._index.catch_up(file)
                yield self._index
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)

    def _append(self, entry: dict) -> None:
        """Append one line (under the lock). Half a line left at the end by a crash or a
        full disk is closed first, so the new entry is never glued onto it."""
        with open(self.ledger, "ab+") as f:
            line = json.dumps(entry).encode() + b"\n"
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def entries(self) -> list[dict]:
        """Everything the sandbox has done (for tests and operators)."""
        with files.open_private(self.ledger, "a+") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                file.seek(0)
                return [entry for line in file if (entry := _entry(line)) is not None]
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)


def _entry(line: str | bytes) -> dict | None:
    """One ledger line as an entry; None for a blank line or the fragment a torn write left
    (that payment was never acknowledged, so there is nothing to account for)."""
    if not line.strip():
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        log.warning("sandbox ledger: skipping a torn line (%d bytes)", len(line))
        return None
    return entry if isinstance(entry, dict) and "type" in entry else None


class _LedgerIndex:
    """What one process has read of the ledger so far, indexed for the gateway's questions;
    brought up to date under the ledger's lock before each use."""

    def __init__(self) -> None:
        self._reset(None)

    def _reset(self, identity: tuple[int, int] | None) -> None:
        self.identity = identity  # (device, inode) of the file read so far
        self.offset = 0  # bytes of it read so far
        # Only what the gateway answers with, not the decoded lines (a dict and its strings
        # for every payment: ~0.9 KiB each, in every worker, for as long as it lives).
        self.charges: dict[str, tuple[str, int, str]] = {}  # key: (charge id, amount, currency)
        self.charge_ids: set[str] = set()
        self.refunds: dict[str, tuple[str, str, int]] = {}  # key: (refund id, charge id, amount)
        self.refunded: set[str] = set()  # charge ids

    def catch_up(self, file: IO[bytes]) -> None:
        """Read the lines appended since the last call. A ledger replaced or cut short
        (deleted, restored, truncated) is read again from its start."""
        stat = os.fstat(file.fileno())
        identity = (stat.st_dev, stat.st_ino)
        if identity != self.identity or stat.st_size < self.offset:
            self._reset(identity)
        if stat.st_size == self.offset:
            return
        file.seek(self.offset)
        tail = file.read()
        complete = tail[: tail.rfind(b"\n") + 1]  # a line still being written waits
        for line in complete.splitlines():
            entry = _entry(line)
            if entry is None:
                continue
            try:
                self._add(entry)
            except (KeyError, TypeError):  # hand-edited, or cut by a tool: not a payment
                log.warning("sandbox ledger: skipping a malformed %s line", entry["type"])
        self.offset += len(complete)

    def _add(self, entry: dict) -> None:
        if entry["type"] == "charge":
            charge_id = entry["charge_id"]
            known = (charge_id, entry["amount_cents"], sys.intern(entry["currency"]))
            self.charges.setdefault(entry["idempotency_key"], known)
            self.charge_ids.add(charge_id)
        elif entry["type"] == "refund":
            charge_id = entry["charge_id"]
            self.refunds.setdefault(
                entry["idempotency_key"], (entry["refund_id"], charge_id, entry["amount_cents"])
            )
            self.refunded.add(charge_id)
        # any other type: not the gateway's business (a note, a later version's entry)


# --- the registry ----------------------------------------------------------------------

# Installed packages offer providers under this entry-point group; each entry point names a
# factory `(config: Mapping[str, Any]) -> PaymentGateway` that gets the app's configuration.
ENTRY_POINT_GROUP = "licensing.payment_providers"

GatewayFactory = Callable[[Mapping[str, Any]], PaymentGateway]


def _sandbox(config: Mapping[str, Any]) -> PaymentGateway:
    return SandboxGateway(
        config["SANDBOX_LEDGER"], latency=config.get("SANDBOX_LATENCY_MS", 0) / 1000
    )


BUILT_IN: dict[str, GatewayFactory] = {"sandbox": _sandbox}


def installed_providers() -> dict[str, Any]:
    """Every provider by name: the built-in sandbox, then the installed entry points."""
    found: dict[str, Any] = dict(BUILT_IN)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, entry_point)
    return found


def make_gateway(config: Mapping[str, Any]) -> PaymentGateway:
    """The gateway PAYMENT_PROVIDER names, built from the app's configuration.

    Called once by `create_app`, so an unknown or broken provider stops the start-up with a
    ConfigError instead of failing the first order.
    """
    name = config["PAYMENT_PROVIDER"]
    providers = installed_providers()
    if name not in providers:
        raise ConfigError(
            f"unknown PAYMENT_PROVIDER {name!r}; installed providers: {', '.join(providers)}"
        )
    factory = providers[name]
    if isinstance(factory, importlib.metadata.EntryPoint):
        try:
            factory = factory.load()
        except Exception as exc:  # an ImportError, or anything the package raises on import
            raise ConfigError(
                f"PAYMENT_PROVIDER {name!r} cannot be loaded ({factory.value}): {exc}"
            ) from None
    return factory(config)


def gateway_of(app: Any) -> PaymentGateway:
    """The app's gateway: the one `make_gateway` built at start-up (orders' init_app)."""
    return app.extensions["payments"]
