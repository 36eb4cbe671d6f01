"""Request and response models of auth's HTTP API (Pydantic; also the OpenAPI schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.auth.passwords import MAX_LENGTH, MIN_LENGTH
from app.kernel.emails import normalise_email


def _valid_email(value: str) -> str:
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
    AfterValidator(_valid_email),
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


CLIENT_ID_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,128}$"


class ActivateIn(BaseModel):
    """With a Bearer token: just `client_id`. Without: `email`, `password` and `client_id`."""

    model_config = ConfigDict(extra="forbid")

    client_id: str = Field(
        pattern=CLIENT_ID_PATTERN,
        description="The installation or device: 1-128 of A-Z a-z 0-9 . _ : @ / + = -",
        examples=["laptop-7f3a"],
    )
    email: str | None = Field(default=None, min_length=1, max_length=320)
    password: str | None = Field(default=None, min_length=1, max_length=MAX_LENGTH)


class LicenseOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    license_id: str
    user_id: str
    client_id: str
    status: Literal["active", "suspended", "revoked"]
    created_at: datetime
    expires_at: datetime
    version: int


class ActivatedLicenseOut(LicenseOut):
    token: str = Field(
        description="Ed25519-signed JWT (alg EdDSA); verify with /.well-known/jwks.json"
    )


class LicensePage(BaseModel):
    items: list[LicenseOut]
    next_cursor: str | None


class ValidateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=4096)
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    nonce: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{8,128}$",
        description="A fresh value the app makes (8-128 URL-safe characters); the signed "
        "`verdict` repeats it, so a replayed answer is told apart.",
    )


class ValidateOut(BaseModel):
    valid: bool
    code: Literal[
        "VALID", "EXPIRED", "SUSPENDED", "REVOKED", "NOT_FOUND", "CLIENT_MISMATCH", "INVALID_TOKEN"
    ]
    license: LicenseOut | None
    checked_at: datetime
    token: str | None = Field(
        default=None,
        description="A freshly signed token, when the license's terms changed since the one "
        "sent was signed or it is close to its expiry: keep it instead (ADR 0007). Its exp "
        "never exceeds the license's expiry.",
    )
    verdict: str = Field(
        description="A JWS (EdDSA, `typ: license-verdict+jwt`, `kid` from the JWKS) over "
        "`code`, `license_id`, `client_id`, `nonce`, `iat` (the server's time) and `exp` "
        "(a few minutes later): what an app verifies instead of trusting the plain JSON."
    )


class DeactivateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=4096)
    client_id: str = Field(min_length=1, max_length=128)


class Jwk(BaseModel):
    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str
    use: Literal["sig"]
    alg: Literal["EdDSA"]


class JwksOut(BaseModel):
    keys: list[Jwk]
