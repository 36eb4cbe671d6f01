"""Request and response models of the accounts API (Pydantic; also the OpenAPI schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.auth.accounts.passwords import MAX_LENGTH, MIN_LENGTH
from app.kernel.emails import normalise_email


def valid_email(value: str) -> str:
    """The normalised address, if it is a syntactically valid one (no DNS look-up)."""
    email = normalise_email(value)
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"value is not a valid email address: {exc}") from None
    return email


# Special-use domains (RFC 6761: .test, .local, ...) have no deliverable addresses;
# email_validator refuses them, and the document says so (in any letter case).
SPECIAL_USE = "|".join(
    "".join(f"[{c}{c.upper()}]" for c in name) for name in SPECIAL_USE_DOMAIN_NAMES
)

# An address as registered: normalised (app.kernel.emails), then checked for syntax.
Email = Annotated[
    str,
    Field(
        max_length=320,
        json_schema_extra={
            "format": "email",
            "not": {"pattern": rf"[@.]({SPECIAL_USE})$"},
        },
    ),
    AfterValidator(valid_email),
]


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email = Field(examples=["ada@example.com"])
    password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # No format check on login: an unknown or odd email is simply invalid credentials.
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=MAX_LENGTH)


class PasswordChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=MAX_LENGTH)
    new_password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)


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
    model_config = ConfigDict(from_attributes=True)

    subscription_id: str
    plan: str
    status: str
    seats: int
    started_at: datetime
    renews_at: datetime


class MeOut(UserOut):
    subscription: SubscriptionOut | None
    seats: SeatsOut
