"""Request and response models of orders' HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.auth.api import LicenseOut, SubscriptionOut, UserOut
from app.kernel.numbers import whole_number


class PlanOut(BaseModel):
    plan: str
    seats: int = Field(description="seats included when none are asked for")
    max_seats: int
    price_cents: int = Field(description="per seat per period, in minor units")
    currency: str
    period_days: int


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: str = Field(min_length=1, max_length=32)
    # strict: "3" or true is not a number of seats to charge for (3.0 is 3: JSON)
    seats: int | None = Field(default=None, ge=1, le=100_000, strict=True)
    payment_token: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="The payment provider's token: visible ASCII",
        examples=["tok_ok"],
    )

    _whole_seats = field_validator("seats", mode="before")(whole_number)


class OrderOut(BaseModel):
    order_id: str
    user_id: str
    plan: str
    seats: int
    amount_cents: int
    currency: str
    status: Literal["pending", "paid", "failed", "cancelling", "cancelled"]
    subscription_id: str | None
    created_at: datetime


class OrderPage(BaseModel):
    items: list[OrderOut]
    next_cursor: str | None


class DashboardOut(BaseModel):
    user: UserOut
    subscription: SubscriptionOut | None
    seats: dict[str, int]
    licenses: list[LicenseOut]
    recent_orders: list[OrderOut]
