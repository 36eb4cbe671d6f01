"""Password hashing with argon2id (argon2-cffi), OWASP parameters by default.

OWASP's Password Storage Cheat Sheet: argon2id with m=19 MiB, t=2, p=1 (the minimum they
recommend). Hashes made with older parameters are re-hashed at the next successful login.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 8
MAX_LENGTH = 128  # characters; bounds the hashing cost a request can cause


@functools.cache
def hasher_for(time_cost: int, memory_cost: int, parallelism: int) -> Hasher:
    """The shared Hasher for these parameters (its dummy hash is computed once per process,
    so an unknown email costs one verify, exactly like a wrong password)."""
    hasher = Hasher(time_cost, memory_cost, parallelism)
    _ = hasher._dummy_hash  # made now, not on the first unknown email (that would be timeable)
    return hasher


def hasher_from_config(config: Mapping[str, Any]) -> Hasher:
    """The shared Hasher for the app's ARGON2_* settings."""
    return hasher_for(
        config["ARGON2_TIME_COST"], config["ARGON2_MEMORY_COST"], config["ARGON2_PARALLELISM"]
    )


@dataclass(frozen=True)
class Hasher:
    """argon2id with the given cost; verifies hashes made with any parameters."""

    time_cost: int = 2
    memory_cost: int = 19 * 1024  # KiB
    parallelism: int = 1

    @cached_property
    def _hasher(self) -> PasswordHasher:
        return PasswordHasher(
            time_cost=self.time_cost, memory_cost=self.memory_cost, parallelism=self.parallelism
        )

    @cached_property
    def _dummy_hash(self) -> str:
        return self._hasher.hash("not-a-real-password-but-the-same-cost")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True when the password matches. With no hash, spends the same time and says no."""
        try:
            return self._hasher.verify(password_hash or self._dummy_hash, password) and bool(
                password_hash
            )
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)
