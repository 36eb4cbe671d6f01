"""The plan catalog. Prices are integer minor units per seat per period.

The default catalog can be replaced with `PLANS_JSON` (a JSON list of the same shape).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any


@dataclass(frozen=True)
class Plan:
    plan: str
    seats: int  # seats included by default
    max_seats: int
    price_cents: int  # per seat per period
    currency: str
    period_days: int

    @property
    def purchasable(self) -> bool:
        return self.price_cents > 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


# Bounds that keep dates and amounts representable (a period of ten years, a million
# seats, ten million a seat: their product still fits a 64-bit integer).
MAX_PERIOD_DAYS = 3660
MAX_SEATS = 1_000_000
MAX_PRICE = 1_000_000_000

DEFAULT_PLANS = (
    Plan("free", seats=1, max_seats=1, price_cents=0, currency="EUR", period_days=365),
    Plan("pro", seats=3, max_seats=50, price_cents=900, currency="EUR", period_days=30),
    Plan(
        "enterprise", seats=25, max_seats=10_000, price_cents=2_900, currency="EUR", period_days=365
    ),
)


def load_catalog(plans_json: str | None) -> dict[str, Plan]:
    """The catalog from configuration (JSON) or the default; ValueError when malformed."""
    if not plans_json:
        return {p.plan: p for p in DEFAULT_PLANS}
    try:
        items = json.loads(plans_json)
        if not isinstance(items, list):
            raise TypeError("a JSON list is expected")
        plans = [Plan(**item) for item in items]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"PLANS_JSON is not a list of plans: {exc}") from None
    if not plans:
        raise ValueError("PLANS_JSON: the catalog is empty")
    for p in plans:
        numbers = (p.seats, p.max_seats, p.price_cents, p.period_days)
        if not all(type(n) is int for n in numbers) or not isinstance(p.currency, str):
            raise ValueError(f"PLANS_JSON: plan {p.plan!r} needs integer numbers and a currency")
        if not isinstance(p.plan, str) or not p.plan.strip():
            raise ValueError("PLANS_JSON: every plan needs a name")
        if p.seats < 1 or p.max_seats < p.seats or p.price_cents < 0 or p.period_days < 1:
            raise ValueError(f"PLANS_JSON: plan {p.plan!r} has impossible numbers")
        if p.period_days > MAX_PERIOD_DAYS or p.max_seats > MAX_SEATS or p.price_cents > MAX_PRICE:
            raise ValueError(
                f"PLANS_JSON: plan {p.plan!r} is beyond the limits (period ≤ {MAX_PERIOD_DAYS} "
                f"days, ≤ {MAX_SEATS:,} seats, ≤ {MAX_PRICE:,} minor units a seat)"
            )
        if len(p.currency) != 3 or not (p.currency.isascii() and p.currency.isupper()):
            raise ValueError(f"PLANS_JSON: plan {p.plan!r} currency must be an ISO 4217 code")
    if len({p.plan for p in plans}) != len(plans):
        raise ValueError("PLANS_JSON: a plan name appears twice")
    return {p.plan: p for p in plans}


def renewal_lead_problem(lead: timedelta, catalog: Mapping[str, Plan]) -> str | None:
    """Why RENEWAL_LEAD is too long for the catalog, if it is: a lead as long as a paid
    plan's period would renew a subscription again at every run, charging one more period
    in advance each time."""
    paid = [p for p in catalog.values() if p.purchasable]
    if not paid:
        return None
    shortest = min(paid, key=lambda p: p.period_days)
    if lead < timedelta(days=shortest.period_days):
        return None
    hours = int(lead.total_seconds() // 3600)
    return (
        f"RENEWAL_LEAD_HOURS ({hours}) must be shorter than the shortest paid plan's period "
        f"({shortest.plan}: {shortest.period_days} days, {shortest.period_days * 24} hours)"
    )


def catalog_of(app: Any) -> dict[str, Plan]:
    """The app's catalog: the one `load_catalog` loaded and checked at start-up."""
    return app.extensions["plans"]
