"""Request and response models of the licensing API (Pydantic; also the OpenAPI schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.auth.accounts.passwords import MAX_LENGTH

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
