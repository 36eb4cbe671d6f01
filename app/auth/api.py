"""auth's public facade: the only thing other modules (and the CLI) may import from auth."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from app.auth import MODULE, service
from app.auth.passwords import MAX_LENGTH, MIN_LENGTH, Hasher
from app.auth.signing import SigningKeyError, generate_key_file
from app.kernel.ownership import module_api

EmailTaken = service.EmailTaken
__all__ = ["EmailTaken", "Hasher", "SigningKeyError", "UserSummary", "generate_key_file"]
PASSWORD_LENGTH = (MIN_LENGTH, MAX_LENGTH)


@dataclass(frozen=True)
class UserSummary:
    """What other modules may know about a user."""

    user_id: str
    email: str
    plan: str
    role: str
    created_at: datetime


def _summary(user: object) -> UserSummary:
    return UserSummary(
        user.user_id,
        user.email,
        user.plan,
        user.role,
        user.created_at,  # type: ignore[attr-defined]
    )


def check_password_policy(password: str) -> str | None:
    """Why the password is unacceptable, or None when it is fine."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        return f"the password must be {MIN_LENGTH} to {MAX_LENGTH} characters long"
    return None


@module_api(MODULE)
def create_user(
    session: Session, email: str, password: str, *, role: str = "user", hasher: Hasher | None = None
) -> UserSummary:
    """Create an account (inside the caller's transaction). Raises EmailTaken."""
    password_hash = (hasher or Hasher()).hash(password)
    return _summary(service.register(session, email, password_hash, role=role, actor_id="cli"))


@module_api(MODULE)
def get_user(session: Session, user_id: str) -> UserSummary | None:
    """The user, or None."""
    try:
        return _summary(service.get_user(session, user_id))
    except service.UserNotFound:
        return None


@module_api(MODULE)
def prune_token_revocations(session: Session) -> int:
    """Delete revocations whose tokens have expired anyway (inside the caller's transaction)."""
    return service.prune_revocations(session)
