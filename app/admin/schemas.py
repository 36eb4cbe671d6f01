"""Request and response models of admin's HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from app.auth.api import LicenseOut, UserOut
from app.kernel.numbers import whole_number
from app.kernel.pagination import cursor_field

LicenseStatus = Literal["active", "suspended", "revoked"]


def in_utc(moment: datetime) -> datetime:
    """An aware time in UTC, where the database keeps times. ValueError for a naive one, or
    one outside the years 1 to 9999 once in UTC (0001-01-01T00:00+14:00 parses, but is in
    year 0 in UTC)."""
    if moment.tzinfo is None:
        raise ValueError("must have a time zone")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("must fall within the years 1 to 9999 in UTC") from None


class UserStatsItem(BaseModel):
    plan: str
    user_count: int
    new_users_30d: int


class UserStatsOut(BaseModel):
    items: list[UserStatsItem]


class LicenseStatsItem(BaseModel):
    status: str
    count: int
    oldest: datetime
    newest: datetime


class LicenseStatsOut(BaseModel):
    items: list[LicenseStatsItem]


class UserQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(
        default=None, min_length=1, max_length=320, description="email prefix"
    )
    plan: str | None = Field(default=None, min_length=1, max_length=32)
    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = cursor_field((datetime, str))


class AdminUserOut(UserOut):
    """auth's user shape, and what an admin also sees: the account-wide login state."""

    failed_logins: int
    locked_until: datetime | None


class UserPage(BaseModel):
    items: list[AdminUserOut]
    next_cursor: str | None


class UserDetailOut(AdminUserOut):
    licenses: list[LicenseOut]


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(default=None, max_length=40)
    action: str | None = Field(default=None, max_length=64)
    since: AwareDatetime | None = Field(default=None, description="RFC 3339, inclusive")
    until: AwareDatetime | None = Field(default=None, description="RFC 3339, exclusive")
    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = cursor_field((datetime, str))

    @field_validator("since", "until")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else in_utc(value)


class AuditEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    log_id: str
    user_id: str | None
    actor_id: str | None
    action: str
    details: dict[str, Any] | None
    ip_address: str | None
    timestamp: datetime


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None


class LicensePatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: LicenseStatus


class BatchUpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    license_id: str = Field(min_length=1, max_length=40)
    status: LicenseStatus
    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, strict=True, description="expected version (optional)"
    )

    _whole_version = field_validator("version", mode="before")(whole_number)


class BatchStatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    updates: list[BatchUpdateIn] = Field(min_length=1, max_length=1000)


class BatchStatusOut(BaseModel):
    items: list[LicenseOut]
