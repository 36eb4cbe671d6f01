"""Request and response models of the webhooks admin API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.kernel.pagination import PageQuery

# A description is shown to admins: no NUL or other control characters.
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    events: list[str] = Field(min_length=1, max_length=50)
    description: str = Field(default="", max_length=500, pattern=NO_CONTROL_CHARACTERS)


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=2048)
    events: list[str] | None = Field(default=None, min_length=1, max_length=50)
    description: str | None = Field(default=None, max_length=500, pattern=NO_CONTROL_CHARACTERS)
    enabled: bool | None = Field(default=None, strict=True)  # not "1" or 1

    @model_validator(mode="after")
    def _something(self) -> EndpointPatch:
        if not self.model_fields_set - {
            name for name in self.model_fields_set if getattr(self, name) is None
        }:
            raise ValueError("give at least one of url, events, description, enabled")
        return self


class EndpointOut(BaseModel):
    webhook_id: str
    url: str
    description: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    secret: str = Field(description="The signing secret (whsec_…): shown this once")


class EndpointList(BaseModel):
    items: list[EndpointOut]


class DeliveryOut(BaseModel):
    delivery_id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_latency_ms: int | None
    last_error: str | None
    last_response: str | None
    created_at: datetime


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class DeliveryQuery(PageQuery):
    pass
