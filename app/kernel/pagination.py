"""Keyset pagination: `limit` (1 to 100, default 20) and an opaque `cursor`.

The cursor is the last row's sort key, base64url-encoded JSON, so clients treat it as
opaque and the server can change what is inside it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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


def decode_key_cursor(cursor: str | None) -> str | None:
    """A cursor holding one string key (an id), or None; InvalidCursor otherwise."""
    key = decode_cursor(cursor)
    if key is not None and not isinstance(key, str):
        raise InvalidCursor()
    return key
