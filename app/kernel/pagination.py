"""Keyset pagination: `limit` (1 to 100, default 20) and an opaque `cursor`.

The cursor is the last row's sort key, base64url-encoded JSON, so clients treat it as
opaque and the server can change what is inside it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Select, and_, or_

from app.kernel.errors import ProblemError


class InvalidCursor(ProblemError):
    status, code = 422, "invalid_cursor"

    def __init__(self) -> None:
        super().__init__("The cursor is not one this API returned.")


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=512)


def encode_cursor(key: Any) -> str:
    return (
        base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode())
        .decode()
        .rstrip("=")
    )


def decode_cursor(cursor: str | None) -> Any:
    """The key inside a cursor (None for none); InvalidCursor when it was tampered with."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
        # JSON may spell lone surrogates (\ud800), which no database accepts.
        json.dumps(key, ensure_ascii=False).encode()
        return key
    except (binascii.Error, ValueError, UnicodeDecodeError, UnicodeEncodeError):
        raise InvalidCursor() from None


# --- one keyset for every list ----------------------------------------------------------
# A list is newest first over key columns whose last one is unique (an id, or a time and
# an id); its cursor is the last row's key values as a JSON list, times in UTC RFC 3339.


def newest_first(
    stmt: Select[Any], keys: Sequence[Any], after: Sequence[Any] | None, limit: int
) -> Select[Any]:
    """`stmt` ordered newest first by `keys`, the rows after the key values `after` (none:
    from the start), one row more than `limit` (to know whether another page follows)."""
    if after is not None:
        *firsts, last = keys
        condition = last < after[-1]
        for column, value in zip(reversed(firsts), reversed(after[:-1]), strict=True):
            condition = or_(column < value, and_(column == value, condition))
        stmt = stmt.where(condition)
    return stmt.order_by(*(k.desc() for k in keys)).limit(limit + 1)


def page_of(
    rows: Sequence[Any], limit: int, key: Callable[[Any], tuple[Any, ...]]
) -> tuple[list[Any], str | None]:
    """The page (at most `limit` rows) and the cursor of the next one (None: the last)."""
    page = list(rows[:limit])
    if len(rows) <= limit:
        return page, None
    values = [
        v.astimezone(UTC).isoformat() if isinstance(v, datetime) else v for v in key(page[-1])
    ]
    return page, encode_cursor(values)


def decode_keyset(cursor: str | None, types: Sequence[type]) -> tuple[Any, ...] | None:
    """The key values in a cursor `page_of` made, as `types` (str or datetime); None for
    no cursor; InvalidCursor for anything else (tampered, naive or out-of-range times)."""
    raw = decode_cursor(cursor)
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != len(types):
        raise InvalidCursor()
    values: list[Any] = []
    for value, kind in zip(raw, types, strict=True):
        if not isinstance(value, str):
            raise InvalidCursor()
        if kind is datetime:
            try:
                moment = datetime.fromisoformat(value)
                if moment.tzinfo is None:
                    raise ValueError("naive")
                value = moment.astimezone(UTC)
            except (ValueError, OverflowError):
                raise InvalidCursor() from None
        values.append(value)
    return tuple(values)
