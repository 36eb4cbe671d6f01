"""Request and response models of the webhooks admin API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.kernel.pagination import PageQuery, cursor_field
from app.webhooks.service import EVENT_TYPES

# A description is shown to admins: no NUL or other control characters.
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"

# What the document says of a URL and of event types. The server checks both itself, with
# its own problems (webhook_url_refused, unknown_event_type): whether a URL is acceptable
# also depends on where its host resolves, which no schema can say.
URL_SCHEMA = {"format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s/@?#]+"}
EVENTS_SCHEMA = {"items": {"type": "string", "enum": list(EVENT_TYPES)}, "uniqueItems": True}


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, json_schema_extra=URL_SCHEMA)
    events: list[str] = Field(min_length=1, max_length=50, json_schema_extra=EVENTS_SCHEMA)
    description: str = Field(default="", max_length=500, pattern=NO_CONTROL_CHARACTERS)


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None, min_length=1, max_length=2048, json_schema_extra=URL_SCHEMA
    )
    events: list[str] | None = Field(
        default=None, min_length=1, max_length=50, json_schema_extra=EVENTS_SCHEMA
    )
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
    cursor: str | None = cursor_field((datetime, str))  # newest first: created_at, id
