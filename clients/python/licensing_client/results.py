"""Typed results."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Code(StrEnum):
    """The seven answers of the service's `validate`."""

    VALID = "VALID"
    EXPIRED = "EXPIRED"
    SUSPENDED = "SUSPENDED"
    REVOKED = "REVOKED"
    NOT_FOUND = "NOT_FOUND"
    CLIENT_MISMATCH = "CLIENT_MISMATCH"
    INVALID_TOKEN = "INVALID_TOKEN"  # noqa: S105 - a code, not a secret


class CheckCode(StrEnum):
    """What `check()` concludes: the seven codes, and two that only an offline check gives."""

    VALID = "VALID"
    EXPIRED = "EXPIRED"
    SUSPENDED = "SUSPENDED"
    REVOKED = "REVOKED"
    NOT_FOUND = "NOT_FOUND"
    CLIENT_MISMATCH = "CLIENT_MISMATCH"
    INVALID_TOKEN = "INVALID_TOKEN"  # noqa: S105 - a code, not a secret
    # The system clock is behind the last server time seen (or the token's issue time) by
    # more than the allowed drift: offline acceptance refused.
    CLOCK_TAMPERED = "CLOCK_TAMPERED"
    # The service could not be reached (or its answer not trusted) and the grace period
    # since the last successful online check is over (or there never was one).
    GRACE_EXPIRED = "GRACE_EXPIRED"


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclass(frozen=True)
class License:
    license_id: str
    user_id: str
    client_id: str
    status: str
    expires_at: datetime | None
    version: int | None
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> License:
        return cls(
            license_id=body["license_id"],
            user_id=body.get("user_id", ""),
            client_id=body.get("client_id", ""),
            status=body.get("status", ""),
            expires_at=_time(body.get("expires_at")),
            version=body.get("version"),
            raw=body,
        )


@dataclass(frozen=True)
class Activation:
    license: License
    token: str
    created: bool  # False: this user already held the license for this client


@dataclass(frozen=True)
class Validation:
    """A verified online answer: the signed verdict matched this request."""

    code: Code
    license: License | None
    server_time: datetime  # the verdict's iat
    token: str | None = None  # a fresh license token the service sent (terms changed)

    @property
    def valid(self) -> bool:
        return self.code is Code.VALID


@dataclass(frozen=True)
class CheckResult:
    code: CheckCode
    online: bool  # True: the service answered (and its verdict verified)
    token: str | None = None  # the license token in use after the check
    license_id: str | None = None
    expires_at: datetime | None = None
    offline_reason: str | None = None  # why the online check failed, when it did

    @property
    def valid(self) -> bool:
        return self.code is CheckCode.VALID
