"""Request and response models of auth's HTTP API (Pydantic; also the OpenAPI schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from app.auth.passwords import MAX_LENGTH, MIN_LENGTH


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr = Field(max_length=320, examples=["ada@example.com"])
    password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # No format check on login: an unknown or odd email is simply invalid credentials.
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=MAX_LENGTH)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    user_id: str
    email: str
    plan: str
    role: Literal["user", "admin"]
    created_at: datetime


class TokenPairOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme name, not a secret
    expires_in: int = Field(description="Seconds until the access token expires")


class SeatsOut(BaseModel):
    limit: int
    used: int


class SubscriptionOut(BaseModel):
    subscription_id: str
    plan: str
    status: str
    seats: int
    started_at: datetime
    renews_at: datetime


class MeOut(UserOut):
    subscription: SubscriptionOut | None
    seats: SeatsOut
