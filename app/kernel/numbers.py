"""JSON numbers as the OpenAPI document declares them.

JSON has one number type: `3` and `3.0` are the same number, and JSON Schema's `integer`
matches both. A field declared `integer` therefore takes a whole number however it is
spelled, and nothing else: not `"3"`, not `true`, not `3.5` (docs/adr/0015).
"""

from __future__ import annotations

from typing import Any


def whole_number(value: Any) -> Any:
    """A float with no fractional part as an int; anything else unchanged (for a strict
    int field's `mode="before"` validator to judge)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
