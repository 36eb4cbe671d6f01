"""Prefixed, time-sortable identifiers (`usr_01J…`, `lic_01J…`)."""

from __future__ import annotations

from ulid import ULID

# Every prefix in use, so a typo in a model is caught at import time, not in production.
PREFIXES = frozenset(
    {"usr", "lic", "sub", "ord", "log", "evt", "rev", "idk", "ch", "re", "whk", "whd"}
)


def new_id(prefix: str) -> str:
    """Return a new identifier: the prefix, an underscore and a ULID (26 chars, sortable)."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return f"{prefix}_{ULID()}"


def id_factory(prefix: str):
    """A column default that makes a new id with this prefix on every insert."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return lambda: new_id(prefix)
