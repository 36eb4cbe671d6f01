"""Keyset pagination: `limit` (1 to 100, default 20) and a `cursor`.

The cursor is the last row's sort key: its id, after the time in microseconds since the
epoch when the list is ordered by a time first (`1733050800123456.usr_01J…`). Clients treat
it as opaque; it is spelled so that the OpenAPI document can say exactly which strings are
cursors (a pattern), and the server takes every string that matches it (docs/adr/0015).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Select, and_, or_

from app.kernel.errors import ProblemError

# An id: a prefix, an underscore and (as app.kernel.ids makes them) a ULID; 40 at most.
ID_PATTERN = r"[a-z]{2,3}_[A-Za-z0-9_]{1,36}"
# A time as whole microseconds since the epoch (up to 16 digits: the year 2286).
TIME_PATTERN = r"[0-9]{1,16}"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


class InvalidCursor(ProblemError):
    status, code = 422, "invalid_cursor"

    def __init__(self) -> None:
        super().__init__("The cursor is not one this API returned.")


def cursor_pattern(types: Sequence[type]) -> str:
    """The pattern of the cursors of a list keyed by `types` (str: an id; datetime)."""
    parts = [TIME_PATTERN if kind is datetime else ID_PATTERN for kind in types]
    return "^" + r"\.".join(parts) + "$"


def cursor_field(types: Sequence[type]) -> Any:
    """The optional `cursor` query parameter of a list keyed by `types`. Its pattern is
    declared, not enforced by validation: a cursor that does not match is the list's own
    `invalid_cursor` (decode_keyset), not a generic validation error."""
    return Field(
        default=None,
        max_length=64,
        description="`next_cursor` of the previous page",
        json_schema_extra={"pattern": cursor_pattern(types)},
    )


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = cursor_field((str,))


def encode_keyset(values: Sequence[Any]) -> str:
    """The cursor of a row's key values (ids, and times in UTC)."""
    parts = [
        str((v.astimezone(UTC) - EPOCH) // MICROSECOND) if isinstance(v, datetime) else v
        for v in values
    ]
    return ".".join(parts)


# --- one keyset for every list ----------------------------------------------------------
# A list is newest first over key columns whose last one is unique (an id, or a time and
# an id); its cursor is the last row's key values (encode_keyset).


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
    return page, encode_keyset(key(page[-1]))


def decode_keyset(cursor: str | None, types: Sequence[type]) -> tuple[Any, ...] | None:
    """The key values in a cursor `page_of` made, as `types` (str or datetime); None for
    no cursor; InvalidCursor for any string that does not match `cursor_pattern(types)`
    (every one that does is a key, so a valid request)."""
    if cursor is None:
        return None
    if not re.fullmatch(cursor_pattern(types), cursor):
        raise InvalidCursor()
    parts = cursor.split(".")
    return tuple(
        EPOCH + int(part) * MICROSECOND if kind is datetime else part
        for part, kind in zip(parts, types, strict=True)
    )
