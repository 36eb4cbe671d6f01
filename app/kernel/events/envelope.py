"""The one shape every event has, and the typed events that fill it.

An event travels as an `Envelope`: its id (the key of every inbox, and the webhook-id a
receiver deduplicates by), its type and the version of that type's payload, when it
occurred, the aggregate it is about (type, id and the aggregate's version after the change,
so a receiver can drop a stale event that arrives late) and the payload. The envelope is
what the outbox stores, what the relay puts on the stream, what consumers receive and what
webhooks post (docs/events.md).

Each event type is a frozen dataclass in the contract of the module that publishes it
(`app/orders/events.py`: `OrderPaid`, …), subclassing `IntegrationEvent`: its fields are the
payload, its class keywords the type, the payload version and the aggregate. Consumers read
`envelope.event()` for the typed value instead of a dict's keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, ClassVar, Self, dataclass_transform

from pydantic import TypeAdapter, ValidationError


class EnvelopeError(ValueError):
    """A serialised envelope (or a payload for a typed event) that does not parse."""


@dataclass(frozen=True)
class Aggregate:
    """What an event is about: `order` `ord_…`, at `version` after the change (None when
    the aggregate keeps no version)."""

    type: str
    id: str
    version: int | None = None


@dataclass(frozen=True)
class Envelope:
    """An event as stored, relayed, consumed and posted. `seq` is the outbox's order (not
    part of the JSON form: a receiver must not rely on order, docs/events.md)."""

    id: str
    type: str
    version: int
    occurred_at: datetime
    aggregate: Aggregate | None
    payload: dict[str, Any]
    seq: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "version": self.version,
            "occurred_at": self.occurred_at.isoformat(),
            "aggregate": None
            if self.aggregate is None
            else {
                "type": self.aggregate.type,
                "id": self.aggregate.id,
                "version": self.aggregate.version,
            },
            "payload": self.payload,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, seq: int = 0) -> Envelope:
        try:
            return _ENVELOPE.validate_python({**data, "seq": seq})
        except ValidationError as exc:
            raise EnvelopeError(f"not an event envelope: {_first_error(exc)}") from None

    @classmethod
    def from_json(cls, text: str | bytes, *, seq: int = 0) -> Envelope:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise EnvelopeError(f"not an event envelope: {exc}") from None
        if not isinstance(data, dict):
            raise EnvelopeError("not an event envelope: not a JSON object")
        return cls.from_dict(data, seq=seq)

    def event(self) -> IntegrationEvent:
        """The payload as its typed event (the class registered for this type and version)."""
        event_class = event_class_of(self.type, self.version)
        if event_class is None:
            raise EnvelopeError(f"no event class for {self.type!r} version {self.version}")
        return event_class.from_payload(self.payload)


_ENVELOPE = TypeAdapter(Envelope)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "envelope"
    return f"{where}: {error['msg']}"


_event_classes: dict[tuple[str, int], type[IntegrationEvent]] = {}


def event_class_of(event_type: str, version: int = 1) -> type[IntegrationEvent] | None:
    return _event_classes.get((event_type, version))


def event_types() -> list[str]:
    """Every event type a typed class was declared for, sorted (the modules' contracts)."""
    return sorted({event_type for event_type, _ in _event_classes})


@dataclass_transform(frozen_default=True, kw_only_default=True)
@dataclass(frozen=True, kw_only=True)
class IntegrationEvent:
    """A typed event, declared by its type and its fields (the payload):

        class OrderPaid(IntegrationEvent, type="order.paid"):
            order_id: str
            ...

    The class's keywords, read back as `TYPE`, `VERSION`, `AGGREGATE` and `AGGREGATE_ID`:
    `type`; `version` of the payload (1; raise it, with a new class, when a field changes
    meaning or goes away; adding an optional field keeps it); `aggregate`, the aggregate's
    type (by default the type's first word, `order`) and `aggregate_id`, the field holding
    its id (by default `<aggregate>_id`). Every subclass is made a frozen, keyword-only
    dataclass; one with a `type` is registered, so consumers can read envelopes back as it
    (one without holds fields several types share).
    """

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1
    AGGREGATE: ClassVar[str]
    AGGREGATE_ID: ClassVar[str]

    def __init_subclass__(
        cls,
        *,
        type: str | None = None,
        version: int = 1,
        aggregate: str | None = None,
        aggregate_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        dataclass(frozen=True, kw_only=True)(cls)
        if type is None:
            return  # a base holding the fields several types share
        cls.TYPE, cls.VERSION = type, version
        cls.AGGREGATE = aggregate or type.partition(".")[0]
        cls.AGGREGATE_ID = aggregate_id or f"{cls.AGGREGATE}_id"
        key = (type, version)
        existing = _event_classes.get(key)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"{type!r} version {version} is declared twice")
        _event_classes[key] = cls

    def payload(self) -> dict[str, Any]:
        """The fields as JSON values (datetimes as ISO 8601 text)."""
        return _adapter(type(self)).dump_python(self, mode="json")

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Self:
        """The typed event from a payload; fields it does not know are ignored (a newer
        publisher may add optional ones)."""
        try:
            return _adapter(cls).validate_python(payload)
        except ValidationError as exc:
            raise EnvelopeError(f"bad {cls.TYPE} payload: {_first_error(exc)}") from None

    def aggregate(self, version: int | None = None) -> Aggregate | None:
        """What the event is about (override for an event that may be about nothing)."""
        return Aggregate(self.AGGREGATE, str(getattr(self, self.AGGREGATE_ID)), version)


@cache
def _adapter(cls: type) -> TypeAdapter[Any]:
    return TypeAdapter(cls)
